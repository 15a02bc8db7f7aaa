"""Fused affine sampling: each output voxel's source computed on the fly, no sampling grid in memory.

:func:`sample_affine` resamples a batch along one general ``[4, 4]`` voxel map per sample
(random rotations, scalings, shears) with the package's boundary rule: within half a voxel
outside the input the edge is read, beyond it ``fill`` (``"zeros"``) or the edge (``"border"``).
:func:`backend` picks how:

- ``"numba"`` (CPU tensors, numba installed: the ``fast`` extra): the kernels of
  :mod:`gpuprep.functional.fused_kernels`, parallel over samples and output slices with as many
  threads as torch uses. They reproduce the torch path bit for bit for nearest neighbour (labels
  equal) and to float rounding for linear;
- ``"triton"`` (CUDA tensors, triton installed): ``fused_sampler_triton.sample_affine_triton``;
- ``"torch"`` (anything else): the torch path of :mod:`gpuprep.functional.resample_general`,
  which builds a sampling grid and calls ``grid_sample``.

:func:`gpuprep.functional.resample.resample` calls :func:`sample_grid_rule` and
:func:`sample_voxel_rule` where it would call that torch path on the CPU.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
import torch

from .boundary import check_point_sampling, fill_tensor
from .grid import normalized_theta
from .numba_threads import pick_kernel
from .resample_general import _EXACT_IN_FLOAT32, general_batched, nearest_general

# Nearest neighbour copies values: any dtype is sampled as the unsigned integer of its size.
_AS_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NUMBA_DTYPES = (torch.float32, torch.float64, torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32,
                 torch.int64)


@functools.lru_cache(maxsize=1)
def _kernels() -> ModuleType | None:
    """:mod:`gpuprep.functional.fused_kernels`, or None when numba cannot be imported."""
    try:
        return importlib.import_module(f"{__package__}.fused_kernels")
    except ImportError:
        return None


def backend(device: torch.device | str) -> str:
    """``"numba"``, ``"triton"`` or ``"torch"``: how :func:`sample_affine` samples tensors on ``device``.

    Parameters
    ----------
    device:
        The device of the volume.

    Example
    -------
    >>> backend("cpu") in ("numba", "torch")
    True
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return "numba" if _kernels() is not None else "torch"
    if kind == "cuda" and _has_triton():
        return "triton"
    return "torch"


@functools.lru_cache(maxsize=1)
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def sample_affine(volume: torch.Tensor, maps: np.ndarray | Sequence[np.ndarray], out_shape: Sequence[int], *,
                  mode: str, padding_mode: str, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Resample ``[B, C, D, H, W]`` along one general voxel map per sample, without a sampling grid.

    The result is :func:`~gpuprep.functional.resample.resample`'s for these maps (the torch path
    it takes for general maps: labels equal, images to float rounding), whatever the backend.

    Parameters
    ----------
    volume:
        The batch; integer dtypes (labels) need ``mode="nearest"`` and keep their dtype.
    maps:
        ``[B, 4, 4]`` float64 output-voxel to input-voxel maps, one per sample.
    out_shape:
        Spatial shape ``(D, H, W)`` of the output.
    mode:
        ``"linear"`` (trilinear) or ``"nearest"``.
    padding_mode:
        ``"zeros"``: ``fill`` beyond half a voxel outside the input; ``"border"``: the edge.
    fill:
        A number, or a tensor broadcastable to ``[B, C, 1, 1, 1]`` (one value per sample and channel).

    Example
    -------
    >>> x = torch.rand(2, 1, 8, 8, 8)
    >>> maps = np.stack([np.eye(4), np.eye(4)])
    >>> maps[:, 1:3, 1:3] = [[[0.96, -0.28], [0.28, 0.96]], [[0.8, 0.6], [-0.6, 0.8]]]  # two rotations
    >>> sample_affine(x, maps, (8, 8, 8), mode="linear", padding_mode="zeros").shape
    torch.Size([2, 1, 8, 8, 8])
    """
    maps = np.asarray(maps, dtype=np.float64).reshape(-1, 4, 4)
    out_shape = tuple(int(s) for s in out_shape)
    _check(volume, maps, mode, padding_mode)
    fill_value = fill_tensor(volume, fill) if padding_mode == "zeros" else None
    kind = backend(volume.device)
    if kind == "triton":
        try:
            from .fused_sampler_triton import sample_affine_triton  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            kind = "torch"
        else:
            return sample_affine_triton(volume, maps, out_shape, mode=mode, padding_mode=padding_mode, fill=fill)
    if kind == "numba" and numba_ready(volume):
        return _numba_affine(volume, maps, out_shape, mode, padding_mode, fill_value)
    return _torch_affine(volume, maps, out_shape, mode, padding_mode, fill_value)


def _check(volume: torch.Tensor, maps: np.ndarray, mode: str, padding_mode: str) -> None:
    if volume.ndim != 5 or maps.shape[0] != volume.shape[0]:
        raise ValueError(f"volume must be [B, C, D, H, W] with one [4, 4] map per sample, got shape "
                         f"{tuple(volume.shape)} and {maps.shape[0]} maps")
    check_point_sampling(volume, mode, padding_mode)


def _torch_affine(volume, maps, out_shape, mode, padding_mode, fill) -> torch.Tensor:
    """The torch path of ``resample`` for general maps (fill shifted out and back, grouped like it)."""
    if fill is not None:
        shifted = volume.double() - fill.double() if not volume.is_floating_point() else volume - fill
        out = _torch_affine(shifted, maps, out_shape, mode, padding_mode, None) + fill.to(shifted.dtype)
        return out if volume.is_floating_point() else out.round().to(volume.dtype)
    if _uses_voxel_rule(volume.dtype, maps, mode):
        out = volume.new_empty((volume.shape[0], volume.shape[1], *out_shape))
        for index, voxel_map in enumerate(maps):
            out[index : index + 1] = nearest_general(volume[index : index + 1], voxel_map, out_shape, padding_mode)
        return out
    return general_batched(volume, maps, out_shape, mode, padding_mode)


def _uses_voxel_rule(dtype: torch.dtype, maps: np.ndarray, mode: str) -> bool:
    """Whether ``resample`` samples these maps with ``nearest_general`` (else ``general_batched``)."""
    if mode != "nearest":
        return False
    one_map = all(np.array_equal(m, maps[0]) for m in maps)
    return one_map or not (dtype.is_floating_point or dtype in _EXACT_IN_FLOAT32)


def _numba_affine(volume, maps, out_shape, mode, padding_mode, fill) -> torch.Tensor:
    # resample shifts integer volumes with a fill to float64 before sampling: same precision here.
    shifted_dtype = torch.float64 if fill is not None and not volume.is_floating_point() else volume.dtype
    if _uses_voxel_rule(shifted_dtype, maps, mode):
        return sample_voxel_rule(volume, maps, out_shape, padding_mode, fill)
    grid_dtype = shifted_dtype if shifted_dtype.is_floating_point else torch.float32
    return sample_grid_rule(volume, maps, out_shape, mode, padding_mode, fill, grid_dtype)


def numba_ready(volume: torch.Tensor) -> bool:
    """Whether the numba kernels can sample ``volume``: numba importable, a CPU tensor without autograd.

    Example
    -------
    >>> numba_ready(torch.zeros(1, 1, 2, 2, 2, requires_grad=True))
    False
    """
    return (type(volume) is torch.Tensor and volume.device.type == "cpu" and not volume.requires_grad
            and volume.dtype in _NUMBA_DTYPES and _kernels() is not None)


def _kernel(name: str) -> Callable:
    """The numba kernel ``name`` of :mod:`gpuprep.functional.fused_kernels` (see :func:`pick_kernel`)."""
    kernels = _kernels()
    assert kernels is not None
    return pick_kernel(kernels, name)


def _prepare(volume: torch.Tensor, out_shape, fill, mode: str) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """The input, the ``[B, C]`` fill and the output, as arrays of the dtype the kernel reads (shared memory)."""
    out = torch.empty((volume.shape[0], volume.shape[1], *out_shape), dtype=volume.dtype)
    values = volume.contiguous()
    fills = (torch.zeros((), dtype=volume.dtype) if fill is None else fill).expand(*volume.shape[:2], 1, 1, 1)
    fills = fills.reshape(volume.shape[:2]).contiguous()
    if mode == "nearest":  # a copy: sample the bits (fewer compiled variants, any dtype)
        bits = _AS_BITS[volume.element_size()]
        values, fills, out = values.view(bits), fills.view(bits), out.view(bits)
    return np.from_dlpack(values), np.from_dlpack(fills), out


def sample_grid_rule(volume: torch.Tensor, maps: np.ndarray, out_shape: Sequence[int], mode: str,
                     padding_mode: str, fill: torch.Tensor | None = None,
                     grid_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``general_batched``'s result (``grid_sample`` on a normalised grid of ``grid_dtype``) from the numba kernel.

    ``grid_dtype`` defaults to the one ``general_batched`` uses: the volume's if floating point,
    else float32. Linear mode needs a float32 or float64 volume.

    Example
    -------
    >>> x = torch.rand(1, 1, 6, 6, 6)
    >>> m = np.eye(4)[None]
    >>> m[0, 1:3, 1:3] = [[0.96, -0.28], [0.28, 0.96]]  # a rotation
    >>> torch.allclose(sample_grid_rule(x, m, (6, 6, 6), "linear", "zeros"), general_batched(x, m, (6, 6, 6),
    ...                "linear", "zeros"), atol=1e-6)
    True
    """
    out_shape = tuple(int(s) for s in out_shape)
    in_shape = tuple(volume.shape[2:])
    grid_dtype = grid_dtype or (volume.dtype if volume.is_floating_point() else torch.float32)
    theta, ax, ay, az, consts = _grid_constants(maps, in_shape, out_shape, grid_dtype)
    values, fills, out = _prepare(volume, out_shape, fill, mode)
    if mode == "linear" and volume.dtype != grid_dtype:
        raise TypeError(f"linear sampling needs a float32 or float64 volume of the grid's dtype: {volume.dtype}")
    kernel = _kernel("grid_linear" if mode == "linear" else "grid_nearest")
    kernel(values, theta, ax, ay, az, consts, padding_mode == "zeros", fills, np.from_dlpack(out))
    return out.view(volume.dtype)


def _grid_constants(maps: np.ndarray, in_shape: tuple, out_shape: tuple, grid_dtype: torch.dtype) -> tuple:
    """The grid kernels' ``theta``, output axes and ``consts`` in the grid's dtype, as ``general_batched`` has them."""
    numpy_dtype = np.float32 if grid_dtype == torch.float32 else np.float64
    theta = np.stack([normalized_theta(m, in_shape, out_shape) for m in maps]).astype(numpy_dtype)
    # The output's normalised axes exactly as _affine_grid builds them (torch.linspace in that dtype).
    ax, ay, az = (torch.linspace(-1, 1, n, dtype=grid_dtype).numpy() if n > 1 else np.zeros(1, numpy_dtype)
                  for n in reversed(out_shape))
    thresholds = [1.0 + 1.0 / max(n - 1, 1) + 1e-6 for n in reversed(in_shape)]
    consts = np.array([1.0, 2.0, *thresholds, *(n - 1 for n in reversed(in_shape)), 0.0], dtype=numpy_dtype)
    return theta, ax, ay, az, consts


def sample_grid_rule_with_labels(volume: torch.Tensor, labels: torch.Tensor, maps: np.ndarray,
                                 out_shape: Sequence[int], padding_mode: str,
                                 onehot: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_grid_rule` of a float32 ``volume`` (linear) and of ``labels`` (nearest) in one pass.

    The results equal the two calls' (no fill: zeros outside under ``"zeros"``); the input
    coordinates are computed once for both. ``labels`` is an integer or bool batch on the same
    input grid (any channel count). With ``onehot`` the labels are instead ``resample_labels``'s
    through ``sample_grid_rule`` (each label's mask interpolated linearly, then the argmax; not for
    int8 labels, whose bits do not sort like their values).

    Example
    -------
    >>> x, labels = torch.rand(2, 1, 6, 6, 6), torch.randint(0, 3, (2, 1, 6, 6, 6), dtype=torch.uint8)
    >>> m = np.stack([np.eye(4), np.eye(4)])
    >>> m[1, 1:3, 1:3] = [[0.96, -0.28], [0.28, 0.96]]  # a rotation
    >>> image, label = sample_grid_rule_with_labels(x, labels, m, (6, 6, 6), "zeros")
    >>> torch.equal(label, sample_grid_rule(labels, m, (6, 6, 6), "nearest", "zeros"))
    True
    """
    if volume.dtype != torch.float32 or labels.is_floating_point() or labels.shape[2:] != volume.shape[2:]:
        raise TypeError(f"need a float32 volume and integer labels on one grid, got {volume.dtype} "
                        f"{tuple(volume.shape)} and {labels.dtype} {tuple(labels.shape)}")
    out_shape = tuple(int(s) for s in out_shape)
    in_shape = tuple(volume.shape[2:])
    if onehot and labels.dtype == torch.int8:
        raise TypeError("one-hot sampling compares label bits: int8 labels are not supported")
    theta, ax, ay, az, consts = _grid_constants(maps, in_shape, out_shape, torch.float32)
    return _linear_with_labels(volume, labels, theta, (ax, ay, az), consts, padding_mode, None, onehot)


def sample_voxel_rule(volume: torch.Tensor, maps: np.ndarray, out_shape: Sequence[int], padding_mode: str,
                      fill: torch.Tensor | None = None) -> torch.Tensor:
    """``nearest_general``'s result (float64 voxel coordinates, ties up) with one map per sample, from numba.

    Example
    -------
    >>> x = torch.randint(0, 5, (1, 1, 6, 6, 6), dtype=torch.uint8)
    >>> m = np.eye(4)
    >>> m[1:3, 1:3] = [[0.96, -0.28], [0.28, 0.96]]  # a rotation
    >>> torch.equal(sample_voxel_rule(x, m[None], (6, 6, 6), "zeros"), nearest_general(x, m, (6, 6, 6), "zeros"))
    True
    """
    out_shape = tuple(int(s) for s in out_shape)
    bounds = np.array([-0.5 - 1e-9, *(n - 0.5 + 1e-9 for n in volume.shape[2:]), 0.5 + 1e-9])
    values, fills, out = _prepare(volume, out_shape, fill, "nearest")
    rows = np.ascontiguousarray(np.asarray(maps, dtype=np.float64).reshape(-1, 4, 4)[:, :3])
    _kernel("voxel_nearest")(values, rows, bounds, padding_mode == "zeros", fills, np.from_dlpack(out))
    return out.view(volume.dtype)


def _linear_with_labels(volume, labels, theta, axes, consts, padding_mode, warp,
                        onehot: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the ``grid_linear_with_labels`` kernel; ``warp``: None or ``(rows, first, taps, linear)`` arrays."""
    out_shape = tuple(len(a) for a in reversed(axes))
    values, fills, out = _prepare(volume, out_shape, None, "linear")
    label_values, _, label_out = _prepare(labels, out_shape, None, "nearest")
    no_warp = (np.zeros((1, 3, 1, 1, 4), np.float32), np.zeros(1, np.int64), np.zeros((1, 4), np.float32),
               np.zeros((1, 3, 3), np.float32))
    _kernel("grid_linear_with_labels")(values, label_values, theta, *axes, consts, padding_mode == "zeros", fills,
                                       warp is not None, *(warp or no_warp), onehot, np.from_dlpack(out),
                                       np.from_dlpack(label_out))
    return out, label_out.view(labels.dtype)


def warp_with_labels(volume: torch.Tensor, labels: torch.Tensor, pre_maps: np.ndarray, rows: torch.Tensor,
                     first: np.ndarray, taps: np.ndarray, out_shape: Sequence[int], padding_mode: str,
                     onehot: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``functional.warp.warp`` of a float32 ``volume`` (linear) and of ``labels`` (nearest) in one pass.

    For a warp that is the last step of its chain (``post`` the identity, the output on the warp's
    grid) whose B-spline field is given separably: ``rows`` ``[B, 3, D, H, nW]``
    (``elastic.bspline_rows``) and the W taps ``first``, ``taps`` (``elastic.bspline_taps``). No
    field, grid or mask is made: each voxel's displacement is evaluated in the kernel as
    ``elastic.rows_to_field`` evaluates it, and its point as ``warp.warp_grid`` makes it, so the
    labels equal ``warp``'s (with the field of ``rows_to_field``) and the image agrees to float
    rounding. Either ``volume`` or ``labels`` may have no channels. ``onehot``: as in
    :func:`sample_grid_rule_with_labels`.

    Example
    -------
    >>> from gpuprep.functional.elastic import bspline_rows, bspline_taps, rows_to_field
    >>> from gpuprep.functional.warp import warp
    >>> x, labels = torch.rand(1, 1, 6, 6, 6), torch.randint(0, 3, (1, 1, 6, 6, 6), dtype=torch.uint8)
    >>> rows, (first, taps) = bspline_rows(torch.rand(1, 3, 4, 4, 4) - 0.5, (6, 6, 6)), bspline_taps(6, 4)
    >>> image, label = warp_with_labels(x, labels, np.eye(4)[None], rows, first, taps, (6, 6, 6), "zeros")
    >>> u = rows_to_field(rows, first, taps)
    >>> torch.equal(label, warp(labels, np.eye(4)[None], u, np.eye(4)[None], (6, 6, 6), "nearest"))
    True
    """
    out_shape = tuple(int(s) for s in out_shape)
    in_shape = tuple(volume.shape[2:])
    if volume.dtype != torch.float32 or labels.is_floating_point() or labels.shape[2:] != volume.shape[2:]:
        raise TypeError(f"need a float32 volume and integer labels on one grid, got {volume.dtype} "
                        f"{tuple(volume.shape)} and {labels.dtype} {tuple(labels.shape)}")
    if tuple(rows.shape[2:4]) != out_shape[:2] or len(first) != out_shape[2]:
        raise ValueError(f"the field's rows {tuple(rows.shape)} and {len(first)} taps are not on the output grid "
                         f"{out_shape}")
    pre = np.asarray(pre_maps, dtype=np.float64)
    theta = np.stack([normalized_theta(m @ np.eye(4), in_shape, out_shape) for m in pre]).astype(np.float32)
    _, ax, ay, az, consts = _grid_constants(pre, in_shape, out_shape, torch.float32)
    scale = np.array([2.0 / max(n - 1, 1) for n in in_shape])
    linear = (pre[:, :3, :3] * scale[None, :, None]).astype(np.float32)
    values = np.from_dlpack(rows.detach().to(torch.float32).contiguous())
    warp = (values, np.ascontiguousarray(first, dtype=np.int64), np.ascontiguousarray(taps, dtype=np.float32), linear)
    if onehot and labels.dtype == torch.int8:
        raise TypeError("one-hot sampling compares label bits: int8 labels are not supported")
    return _linear_with_labels(volume, labels, theta, (ax, ay, az), consts, padding_mode, warp, onehot)
