"""Resampling through a displacement field between two affine maps (fused affine + elastic).

A chain of spatial steps with one elastic step reads the input, for every output voxel ``x``, at::

    pre @ (z + u(z)),   z = post @ x

where ``post`` is the product of the voxel maps after the elastic step, ``pre`` the product of
those before it, and ``u`` the elastic displacement (voxels, array axes) on the grid of the
elastic step. :func:`warp` resamples that in **one** ``grid_sample``: the affine part gives the
sampling grid, and ``pre``'s linear part times ``u(z)`` is added to it. Where ``post`` is the
identity ``u`` is used as is; elsewhere it is read at ``z`` by trilinear interpolation (the field
is smooth on the scale of its control points, many voxels apart, so this is accurate to far
below a voxel).

:func:`invert_displacement` gives the approximate inverse field used by ``gp.invert``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .fused_sampler import numba_ready, warp_with_labels
from .grid import normalized_theta
from .resample_general import GridCache, _affine_grid, inside_grid

__all__ = ["invert_displacement", "sample_field", "warp", "warp_grid", "warp_image_and_labels"]

# Integer dtypes whose values survive float32; larger ones go through float64.
_EXACT_IN_FLOAT32 = (torch.uint8, torch.int8, torch.int16, torch.bool)


def sample_field(field: torch.Tensor, post_maps: np.ndarray, out_shape: Sequence[int]) -> torch.Tensor:
    """Read a displacement field ``[B, 3, d, h, w]`` at ``post @ x`` for every voxel ``x`` of ``out_shape``.

    Trilinear, clamped at the border. Returns ``field`` itself where every map is the identity
    on the same shape.

    Example
    -------
    >>> f = torch.rand(1, 3, 4, 5, 6)
    >>> torch.equal(sample_field(f, np.eye(4)[None], (4, 5, 6)), f)
    True
    """
    warp_shape, out_shape = tuple(field.shape[2:]), tuple(int(n) for n in out_shape)
    maps = np.asarray(post_maps, dtype=np.float64)
    if out_shape == warp_shape and np.allclose(maps, np.eye(4), atol=1e-12):
        return field
    theta = torch.as_tensor(np.stack([normalized_theta(m, warp_shape, out_shape) for m in maps]),
                            dtype=field.dtype, device=field.device)
    return F.grid_sample(field, _affine_grid(theta, out_shape), mode="bilinear", padding_mode="border",
                         align_corners=True)


def warp_grid(pre_maps, field, post_maps, in_shape, out_shape) -> torch.Tensor:
    """The ``grid_sample`` grid ``[B, D, H, W, 3]`` reading the input at ``pre @ (z + u(z))``, ``z = post @ x``.

    Parameters
    ----------
    pre_maps, post_maps:
        ``[B, 4, 4]`` voxel maps (warp grid -> input, output -> warp grid).
    field:
        ``[B, 3, d, h, w]`` displacement in voxels along the array axes of the warp grid.
    in_shape, out_shape:
        Spatial shapes of the input and of the output.
    """
    pre, post = np.asarray(pre_maps, dtype=np.float64), np.asarray(post_maps, dtype=np.float64)
    in_shape, out_shape = tuple(int(n) for n in in_shape), tuple(int(n) for n in out_shape)
    dtype, device = field.dtype, field.device
    theta = torch.as_tensor(np.stack([normalized_theta(a @ b, in_shape, out_shape) for a, b in zip(pre, post)]),
                            dtype=dtype, device=device)
    grid = _affine_grid(theta, out_shape)
    displacement = sample_field(field, post, out_shape)  # [B, 3, D, H, W] voxels of the warp grid
    # Into input voxels (pre's linear part), then normalised units of grid_sample's (W, H, D) order.
    scale = np.array([2.0 / max(n - 1, 1) for n in in_shape])
    linear = torch.as_tensor(pre[:, :3, :3] * scale[None, :, None], dtype=dtype, device=device)  # [B, 3, 3]
    for axis in range(3):
        row = linear[:, axis].reshape(-1, 3, 1, 1, 1)
        grid[..., 2 - axis] += (row * displacement).sum(dim=1)
    return grid


def warp(
    volume: torch.Tensor,
    pre_maps: np.ndarray,
    field: torch.Tensor,
    post_maps: np.ndarray,
    out_shape: Sequence[int],
    mode: str = "linear",
    padding_mode: str = "zeros",
    cache: GridCache | None = None,
    field_key: tuple | None = None,
) -> torch.Tensor:
    """Resample ``[B, C, D, H, W]`` at ``pre @ (z + u(z))``, ``z = post @ x``, in one pass.

    Parameters
    ----------
    volume:
        Input batch; integer label maps are sampled by nearest neighbour and keep their dtype.
    pre_maps, field, post_maps:
        See :func:`warp_grid`; ``field`` may be float32 or float64.
    out_shape:
        Output spatial shape.
    mode:
        ``"linear"`` or ``"nearest"`` for floating-point volumes.
    padding_mode:
        ``"zeros"`` (0 beyond half a voxel outside the input, the package's rule) or ``"border"``.
    cache, field_key:
        A :class:`~gpuprep.functional.resample_general.GridCache` and a key that identifies the
        maps and field: keys warped alike (an image and its labels) then share one sampling grid.

    Example
    -------
    >>> x = torch.rand(2, 1, 6, 7, 8)
    >>> eye = np.eye(4)[None].repeat(2, 0)
    >>> torch.allclose(warp(x, eye, torch.zeros(2, 3, 6, 7, 8), eye, (6, 7, 8)), x, atol=1e-6)
    True
    """
    if volume.is_floating_point():
        work = volume
    else:
        work = volume.float() if volume.dtype in _EXACT_IN_FLOAT32 else volume.double()
        mode = "nearest"
    in_shape = tuple(volume.shape[2:])

    build = functools.partial(_warp_grid_and_mask, pre_maps, field, post_maps, in_shape, out_shape, work.dtype)
    if cache is None or field_key is None:
        grid, inside = build()
    else:
        grid, inside = cache.get(("warp", field_key, in_shape, tuple(out_shape), work.dtype), build)
    out = F.grid_sample(work, grid, mode="bilinear" if mode == "linear" else "nearest", padding_mode="border",
                        align_corners=True)
    if padding_mode == "zeros":
        out.mul_(inside)
    return out if volume.is_floating_point() else out.round().to(volume.dtype)


def warp_image_and_labels(image: torch.Tensor | None, labels: torch.Tensor | None, pre_maps: np.ndarray,
                          rows: torch.Tensor, first: np.ndarray, taps: np.ndarray, post_maps: np.ndarray,
                          out_shape: Sequence[int], padding_mode: str = "zeros", onehot: bool = False) -> tuple | None:
    """:func:`warp` of an image (linear) and/or its labels (nearest) in one pass of the numba kernel, or None.

    The B-spline field comes separably: ``rows`` (``elastic.bspline_rows``) and the W axis's
    ``first``, ``taps`` (``elastic.bspline_taps``); the results are :func:`warp`'s with the field
    ``elastic.rows_to_field(rows, first, taps)`` (labels equal, the image to float rounding).
    Returns ``(image, labels)`` (None for the one not given), or None (use :func:`warp`) unless
    numba is installed, the image is float32 and the labels integer, on one grid, and the warp is
    the last step (``post`` the identity, the output on the field's grid). ``onehot``: the labels
    as ``resample_labels`` gives them through :func:`warp` (linear masks, the argmax).

    Example
    -------
    >>> from gpuprep.functional.elastic import bspline_rows, bspline_taps, rows_to_field
    >>> labels = torch.randint(0, 3, (1, 1, 6, 6, 6), dtype=torch.uint8)
    >>> rows, (first, taps) = bspline_rows(torch.rand(1, 3, 4, 4, 4) - 0.5, (6, 6, 6)), bspline_taps(6, 4)
    >>> eye = np.eye(4)[None]
    >>> pair = warp_image_and_labels(None, labels, eye, rows, first, taps, eye, (6, 6, 6))
    >>> pair is None or torch.equal(pair[1], warp(labels, eye, rows_to_field(rows, first, taps), eye, (6, 6, 6)))
    True
    """
    given = [v for v in (image, labels) if v is not None]
    out_shape = tuple(int(n) for n in out_shape)
    post = np.asarray(post_maps, dtype=np.float64)
    usable = (bool(given) and (image is None or image.dtype == torch.float32)
              and (labels is None or labels.dtype in _EXACT_IN_FLOAT32)
              and all(v.shape[2:] == given[0].shape[2:] and v.shape[0] == rows.shape[0] for v in given)
              and all(numba_ready(v) for v in given) and rows.device.type == "cpu" and not rows.requires_grad
              and tuple(rows.shape[2:4]) == out_shape[:2] and len(first) == out_shape[2]
              and np.allclose(post, np.eye(4), atol=1e-12) and not (onehot and labels is not None
                                                                     and labels.dtype == torch.int8))
    if not usable:
        return None
    template = given[0]
    empty = template.new_empty((template.shape[0], 0, *template.shape[2:]), dtype=torch.uint8)
    out = warp_with_labels(empty.float() if image is None else image, empty if labels is None else labels,
                           pre_maps, rows, first, taps, out_shape, padding_mode, onehot)
    return (None if image is None else out[0]), (None if labels is None else out[1])


def _warp_grid_and_mask(pre_maps, field, post_maps, in_shape, out_shape, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    grid = warp_grid(pre_maps, field.to(dtype), post_maps, in_shape, out_shape)
    return grid, inside_grid(grid, in_shape)


def invert_displacement(field: torch.Tensor, iterations: int = 6, stride: int = 2) -> torch.Tensor:
    """The displacement ``v`` with ``y + v(y) = x`` wherever ``y = x + u(x)``: the inverse warp.

    Solved by the fixed-point iteration ``v(y) <- -u(y + v(y))`` (Chen et al., Med. Phys. 2008),
    with ``u`` read by trilinear interpolation. It converges when ``|grad u| < 1``, which smooth
    B-spline fields of a few millimetres satisfy; the error falls geometrically. Because ``v`` is
    as smooth as ``u``, it is solved on a grid ``stride`` times coarser along each axis (spanning
    the same extent) and interpolated back trilinearly.

    Parameters
    ----------
    field:
        ``[B, 3, D, H, W]`` displacement ``u`` in voxels along the array axes.
    iterations:
        Fixed-point steps.
    stride:
        Coarsening of the grid on which ``v`` is solved (1: every voxel).

    Example
    -------
    >>> u = torch.full((1, 3, 5, 5, 5), 0.5)
    >>> torch.allclose(invert_displacement(u), -u)
    True
    """
    shape = tuple(field.shape[2:])
    coarse = tuple(max(2, -(-(n - 1) // stride) + 1) if n > 1 else 1 for n in shape)
    options: dict[str, Any] = {"dtype": field.dtype, "device": field.device}
    axes = [torch.linspace(0, n - 1, m, **options) for n, m in zip(shape, coarse)]
    base = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # [3, d, h, w] voxel positions
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], **options).view(3, 1, 1, 1)

    def field_at(offset: torch.Tensor) -> torch.Tensor:
        points = (base + offset) * scale - 1.0  # normalised, (D, H, W) order
        return F.grid_sample(field, points.flip(1).movedim(1, -1), mode="bilinear", padding_mode="border",
                             align_corners=True)

    inverse = -field_at(torch.zeros((), **options).expand(field.shape[0], 3, *coarse))
    for _ in range(iterations):
        inverse = -field_at(inverse)
    if coarse != shape:
        inverse = F.interpolate(inverse, size=shape, mode="trilinear", align_corners=True)
    return inverse
