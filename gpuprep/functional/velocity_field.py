"""Displacement fields as maps: warping volumes, composing fields, and integrating a stationary velocity field.

Conventions (those of :mod:`gpuprep.functional.jacobian`): a displacement or velocity field is
``[B, 3, D, H, W]``; component ``k`` points along array axis ``k`` (D, H, W) and is in **voxels**
of the field's own grid (the caller converts millimetres). A displacement ``u`` stands for the map
``phi(x) = x + u(x)`` of voxel coordinates ``x``. A field is read between voxels by trilinear
interpolation (``grid_sample`` with ``align_corners=True``: normalised -1 is voxel 0, +1 is voxel
``n - 1``) and, outside the grid, takes the value of the nearest border voxel.

:func:`integrate_velocity` computes the displacement of ``exp(v)``, the time-1 flow of a stationary
velocity field ``v``, by scaling and squaring (Arsigny et al., MICCAI 2006): ``u = v / 2**steps``,
then ``steps`` times ``u <- u o u``. Being the flow of a smooth field, ``exp(v)`` is a
diffeomorphism, and ``exp(-v)`` is its inverse (both up to the discretisation), which is why
registration optimises ``v`` rather than ``u``. Everything is batched, runs on any device and is
differentiable with autograd.

References
----------
V. Arsigny, O. Commowick, X. Pennec, N. Ayache, "A Log-Euclidean framework for statistics on
diffeomorphisms", MICCAI 2006. J. Ashburner, "A fast diffeomorphic image registration algorithm"
(DARTEL), NeuroImage 38 (2007).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..validation import check_int
from .filters import gaussian_filter
from .numba_threads import pick_kernel

__all__ = ["compose_displacements", "gaussian_smooth_field", "identity_grid", "integrate_velocity", "warp_volume"]

_MODES = {"linear": "bilinear", "nearest": "nearest"}
_PADDING = ("zeros", "border")


def identity_grid(shape: Sequence[int], device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The voxel coordinates of a grid ``(D, H, W)``: ``[1, 3, D, H, W]``, component ``k`` the index along axis ``k``.

    ``identity_grid(shape) + u`` are the positions ``phi(x) = x + u(x)`` a displacement ``u`` points to.

    Example
    -------
    >>> grid = identity_grid((2, 3, 4))
    >>> tuple(grid.shape), grid[0, :, 1, 2, 3].tolist()
    ((1, 3, 2, 3, 4), [1.0, 2.0, 3.0])
    """
    axes = [torch.arange(int(n), device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def _check_field(field: Any, owner: str, name: str) -> torch.Tensor:
    if not isinstance(field, torch.Tensor) or field.ndim != 5 or field.shape[1] != 3:
        shape = tuple(field.shape) if isinstance(field, torch.Tensor) else type(field).__name__
        raise ValueError(f"{owner}: {name} must be [B, 3, D, H, W], got {shape}")
    if not field.is_floating_point():
        raise TypeError(f"{owner}: {name} must be floating point, got {field.dtype}")
    return field


def _sampling_grid(displacement: torch.Tensor) -> torch.Tensor:
    """``grid_sample``'s grid ``[B, D, H, W, 3]`` (last axis W, H, D, normalised) for the positions ``x + u(x)``."""
    shape = displacement.shape[2:]
    options: dict[str, Any] = {"dtype": displacement.dtype, "device": displacement.device}
    # normalised coordinates of the voxel centres plus u scaled to the normalised unit; an axis of
    # one voxel gets scale 1, harmless since grid_sample then reads index 0 whatever the coordinate
    axes = [torch.linspace(-1.0, 1.0, int(n), **options) for n in shape]
    base = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    scale = torch.tensor([2.0 / max(int(n) - 1, 1) for n in shape], **options).view(3, 1, 1, 1)
    return (base + displacement * scale).flip(1).movedim(1, -1)


def _same_batch(a: torch.Tensor, b: torch.Tensor, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand a batch of one to the other's batch size (one template against many fields, or the converse)."""
    if a.shape[0] == b.shape[0]:
        return a, b
    if a.shape[0] == 1:
        return a.expand(b.shape[0], *a.shape[1:]), b
    if b.shape[0] == 1:
        return a, b.expand(a.shape[0], *b.shape[1:])
    raise ValueError(f"{owner}: batch sizes {a.shape[0]} and {b.shape[0]} differ (and neither is 1)")


def warp_volume(volume: torch.Tensor, displacement: torch.Tensor, mode: str = "linear",
                padding_mode: str = "zeros") -> torch.Tensor:
    """The values of ``volume`` at ``x + u(x)`` for every voxel ``x`` of the field's grid: ``[B, C, D, H, W]``.

    Parameters
    ----------
    volume:
        ``[B, C, D, H, W]`` on the same grid as the field (so ``x`` and ``x + u(x)`` are in the same
        voxel coordinates). Integer and boolean volumes (label maps) need ``mode="nearest"`` and
        keep their dtype.
    displacement:
        ``[B, 3, D, H, W]`` in voxels along the array axes. A batch of one is expanded to the
        volume's batch, and a volume batch of one to the field's.
    mode:
        ``"linear"`` (trilinear) or ``"nearest"``.
    padding_mode:
        Where ``x + u(x)`` leaves the grid: ``"zeros"`` (as ``scipy.ndimage.map_coordinates``'s
        ``mode="grid-constant"``, interpolating towards 0 within a voxel of the edge) or
        ``"border"`` (the nearest border voxel, scipy's ``mode="nearest"``).

    Example
    -------
    >>> volume = torch.arange(4.0).view(1, 1, 4, 1, 1)
    >>> shift = torch.zeros(1, 3, 4, 1, 1); shift[:, 0] = 0.5             # read half a voxel further along D
    >>> warp_volume(volume, shift).flatten().round(decimals=4).tolist()
    [0.5, 1.5, 2.5, 1.5]
    >>> warp_volume(volume, shift, padding_mode="border").flatten().round(decimals=4).tolist()
    [0.5, 1.5, 2.5, 3.0]
    """
    owner = "warp_volume"
    displacement = _check_field(displacement, owner, "displacement")
    if not isinstance(volume, torch.Tensor) or volume.ndim != 5 or volume.shape[2:] != displacement.shape[2:]:
        shape = tuple(volume.shape) if isinstance(volume, torch.Tensor) else type(volume).__name__
        raise ValueError(f"{owner}: volume must be [B, C, {', '.join(map(str, displacement.shape[2:]))}] "
                         f"(the field's grid), got {shape}")
    if mode not in _MODES:
        raise ValueError(f"{owner}: mode must be one of {tuple(_MODES)}, got {mode!r}")
    if padding_mode not in _PADDING:
        raise ValueError(f"{owner}: padding_mode must be one of {_PADDING}, got {padding_mode!r}")
    dtype = volume.dtype
    if not volume.is_floating_point():
        if mode != "nearest":
            raise TypeError(f"{owner}: an integer or boolean volume needs mode='nearest', got mode={mode!r}")
        volume = volume.to(torch.float64)  # exact for every integer label up to 2**53
    volume, displacement = _same_batch(volume, displacement, owner)
    grid = _sampling_grid(displacement).to(volume.dtype)
    out = F.grid_sample(volume, grid, mode=_MODES[mode], padding_mode=padding_mode, align_corners=True)
    return out if out.dtype == dtype else out.round().to(dtype)


def compose_displacements(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The displacement ``w`` of ``phi_outer o phi_inner``: ``x + w(x) = phi_outer(phi_inner(x))``.

    That is ``w(x) = inner(x) + outer(x + inner(x))``: ``inner`` is applied first, and ``outer`` is
    read (trilinearly, border-clamped) at the points ``inner`` moves to. Warping a volume by ``w``
    equals warping it by ``outer`` and then warping the result by ``inner`` (up to interpolation).

    Parameters
    ----------
    outer, inner:
        ``[B, 3, D, H, W]`` on the same grid, in voxels; a batch of one is expanded to the other's.

    Example
    -------
    >>> outer, inner = torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4)
    >>> outer[:, 0] = torch.arange(4.0).view(4, 1, 1)          # u(x) = x_D: doubles D
    >>> inner[:, 0] = 1.0                                      # one voxel along D
    >>> compose_displacements(outer, inner)[0, 0, :, 0, 0].tolist()   # 1 + min(x_D + 1, 3)
    [2.0, 3.0, 4.0, 4.0]
    """
    owner = "compose_displacements"
    outer, inner = _check_field(outer, owner, "outer"), _check_field(inner, owner, "inner")
    if outer.shape[2:] != inner.shape[2:] or outer.dtype != inner.dtype:
        raise ValueError(f"{owner}: outer {tuple(outer.shape)} {outer.dtype} and inner {tuple(inner.shape)} "
                         f"{inner.dtype} must share the grid and the dtype")
    outer, inner = _same_batch(outer, inner, owner)
    kernels = _compose_kernels(outer, inner)
    if kernels is not None:  # one pass, no sampling grid (CPU, float32, nothing to differentiate)
        out = torch.empty(outer.shape, dtype=outer.dtype)
        pick_kernel(kernels, "compose_border")(np.from_dlpack(outer.detach().contiguous()),
                                               np.from_dlpack(inner.detach().contiguous()), np.from_dlpack(out))
        return out
    moved = F.grid_sample(outer, _sampling_grid(inner), mode="bilinear", padding_mode="border", align_corners=True)
    return inner + moved


def _compose_kernels(outer: torch.Tensor, inner: torch.Tensor) -> ModuleType | None:
    """:mod:`gpuprep.functional.velocity_kernels` where it applies (CPU float32, no gradient needed), else None."""
    if outer.device.type != "cpu" or outer.dtype != torch.float32:
        return None
    if torch.is_grad_enabled() and (outer.requires_grad or inner.requires_grad):
        return None
    return _load_kernels()


@functools.lru_cache(maxsize=1)
def _load_kernels() -> ModuleType | None:
    """:mod:`gpuprep.functional.velocity_kernels`, or None without numba (tests patch this to force torch)."""
    try:
        return importlib.import_module(f"{__package__}.velocity_kernels")
    except ImportError:
        return None


def integrate_velocity(velocity: torch.Tensor, steps: int = 7, inverse: bool = False) -> torch.Tensor:
    """The displacement of ``exp(v)`` (``inverse``: of ``exp(-v)``) by scaling and squaring: ``[B, 3, D, H, W]``.

    ``u = v / 2**steps`` (a map close enough to the identity for ``x + u(x)`` to approximate the
    flow), then ``steps`` times ``u <- compose_displacements(u, u)``. A constant velocity gives
    the same constant translation; for a small ``v``, ``exp(v) = v + O(|v|**2)``. ``exp(-v)`` is the
    inverse of ``exp(v)`` up to the interpolation error, so ``inverse=True`` is the inverse map at
    the cost of one more integration.

    Parameters
    ----------
    velocity:
        ``[B, 3, D, H, W]`` stationary velocity field, in voxels of its grid (per unit time).
    steps:
        Squarings (``2**steps`` time steps). 0 returns ``v`` itself, the small-deformation map.
        6 to 8 keep the Jacobian positive for smooth fields of a few voxels.
    inverse:
        Integrate ``-v``.

    Example
    -------
    >>> v = torch.zeros(1, 3, 5, 5, 5); v[:, 1] = 1.5                  # a constant velocity along H
    >>> integrate_velocity(v).unique().tolist(), integrate_velocity(v, inverse=True).unique().tolist()
    ([0.0, 1.5], [-1.5, 0.0])
    """
    velocity = _check_field(velocity, "integrate_velocity", "velocity")
    steps = check_int("integrate_velocity", "steps", steps, minimum=0)
    u = velocity * ((-1.0 if inverse else 1.0) / 2**steps)
    for _ in range(steps):
        u = compose_displacements(u, u)
    return u


def gaussian_smooth_field(field: torch.Tensor, sigma: Any, mode: str = "nearest",
                          truncate: float = 4.0) -> torch.Tensor:
    """Gaussian smoothing of every component of a field ``[B, 3, D, H, W]`` (or any ``[B, C, D, H, W]``).

    :func:`gpuprep.functional.filters.gaussian_filter` per component, i.e.
    ``scipy.ndimage.gaussian_filter(field[b, k], sigma, mode=mode, truncate=truncate)``; the
    default boundary ``"nearest"`` keeps a constant field (a translation) unchanged to the edge.
    Differentiable; used to keep a velocity update smooth (the "fluid" regularisation of Demons).

    Parameters
    ----------
    sigma:
        Standard deviation in voxels: a number, ``(sD, sH, sW)`` or one row per sample ``[B, 3]``.
    mode, truncate:
        As in :func:`~gpuprep.functional.filters.gaussian_filter`.

    Example
    -------
    >>> field = torch.full((1, 3, 6, 6, 6), 2.0)
    >>> gaussian_smooth_field(field, 1.5).sub(2.0).abs().max().item() < 1e-6
    True
    """
    if not isinstance(field, torch.Tensor) or field.ndim != 5:
        shape = tuple(field.shape) if isinstance(field, torch.Tensor) else type(field).__name__
        raise ValueError(f"gaussian_smooth_field: field must be [B, C, D, H, W], got {shape}")
    return gaussian_filter(field, sigma, truncate=truncate, mode=mode)
