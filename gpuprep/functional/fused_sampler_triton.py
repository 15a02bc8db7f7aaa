"""A fused Triton sampler for per-sample general maps: no materialised sampling grid.

The CUDA path of :func:`gpuprep.functional.resample.resample` for distinct rotations/shears per
sample builds a ``[B, D, H, W, 3]`` grid and a mask, then calls ``grid_sample``: it writes and
reads the grid (three floats per output voxel) besides the volume. The kernel here computes every
output voxel's source coordinate from the sample's ``[3, 4]`` map on the fly, so it reads the input
and writes the output, nothing more.

Design: a 2D launch, axis 0 over blocks of ``BLOCK`` output voxels (flat ``D*H*W`` index), axis 1
over samples. A program loads its sample's map coefficients (a small device tensor), computes
the source coordinate of each of its voxels once, and loops over the channels, so coordinates,
indices and weights serve every channel. Coordinates are split into an exact whole part and a
fraction (the map's coefficients as an exactly summable float32 part plus a small remainder), so
float32 arithmetic gives them to about 1e-7 voxels at any size up to 16384 voxels, where a plain
float32 ``m @ (d, h, w, 1)``, like the torch path's float32 grid, is off by several 1e-6 voxels
at 40 voxels and more at 128 (the images then differ by that times their gradient). Float64
volumes, and maps reaching further, use float64 coordinates; float16 and bfloat16 images are
interpolated in float32 and rounded once when stored.

Boundary rule (the package's, as the torch path applies it): a source point within half a voxel
outside the input (with the torch path's tolerance of 1e-6 in normalised units) reads the clamped
edge; beyond that the output is ``fill`` under ``"zeros"`` and the clamped edge under ``"border"``.
Nearest neighbour rounds exact ties (a point midway between two voxels, which random rotations
do not produce) half up, as :func:`~gpuprep.functional.resample_general.nearest_general` does;
the batched torch path (``grid_sample`` on a float32 grid) rounds them half to even.

Triton is imported when this module is (guarded: without it, :data:`triton` is None and
:func:`sample_affine_triton` raises ImportError); ``import gpuprep`` never imports this module.
Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernel runs on CPU tensors
with Triton's interpreter, which the tests use on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from .boundary import check_point_sampling, fill_tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton (CPU-only torch): the module imports, the sampler raises
    triton = None
    tl = None

BLOCK = 512
QUANTUM = 10  # bits after the binary point of the exact part of the map coefficients


def _jit(function):
    return triton.jit(function) if triton is not None else function


@_jit
def _source_axis(coefficients, axis, pd, ph, pw, n, tol):
    """Source coordinate along input ``axis`` as a whole part and a fraction in [0, 1), and the inside test.

    The coefficients come in two parts (see :func:`_split_maps`): ``hi``, multiples of
    ``2**-QUANTUM`` whose sums with the output indices are exact in float32, and the small
    remainder ``lo``; so the fraction is as accurate as float64 coordinates would give.
    """
    row = coefficients + 4 * axis
    hi = tl.load(row + 3) + tl.load(row) * pd + tl.load(row + 1) * ph + tl.load(row + 2) * pw
    lo = tl.load(row + 15) + tl.load(row + 12) * pd + tl.load(row + 13) * ph + tl.load(row + 14) * pw
    whole = tl.floor(hi)
    frac = (hi - whole) + lo
    carry = tl.floor(frac)
    whole += carry
    frac -= carry
    # Within half a voxel of the input; whole +- 0.5 is exact and the sums are near 0, so precise.
    inside = ((whole + 0.5) + frac >= -tol) & ((whole - (n - 0.5)) + frac <= tol)
    return whole, frac, inside


@_jit
def _linear_axis(whole, frac, n):
    """Index of the near neighbour (clamped: the edge is read beyond the input) and the far one's weight."""
    below = whole < 0
    above = whole >= n - 1
    index = tl.where(below, 0, tl.where(above, n - 1, whole.to(tl.int32)))
    return index, tl.where(below | above, 0.0, frac).to(frac.dtype)


@_jit
def _nearest_axis(whole, frac, n):
    """Nearest index, exact ties rounded up, clamped to the input."""
    index = whole.to(tl.int32) + (frac >= 0.5).to(tl.int32)
    return tl.minimum(tl.maximum(index, 0), n - 1)


@_jit
def _sample_affine_kernel(src_ptr, out_ptr, map_ptr, fill_ptr, channels,
                          in_d, in_h, in_w, out_d, out_h, out_w, tol_d, tol_h, tol_w,
                          LINEAR: tl.constexpr, ZEROS: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    sample = tl.program_id(1)
    offsets = block * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < out_d * out_h * out_w
    coefficients = map_ptr + sample * 24
    real = tl.load(coefficients).dtype
    pw = (offsets % out_w).to(real)
    ph = ((offsets // out_w) % out_h).to(real)
    pd = (offsets // (out_w * out_h)).to(real)
    wd, td, inside_d = _source_axis(coefficients, 0, pd, ph, pw, in_d, tol_d)
    wh, th, inside_h = _source_axis(coefficients, 1, pd, ph, pw, in_h, tol_h)
    ww, tw, inside_w = _source_axis(coefficients, 2, pd, ph, pw, in_w, tol_w)
    inside = inside_d & inside_h & inside_w
    plane = in_h * in_w
    if LINEAR:
        d0, td = _linear_axis(wd, td, in_d)
        h0, th = _linear_axis(wh, th, in_h)
        w0, tw = _linear_axis(ww, tw, in_w)
        step_d = tl.where(d0 + 1 < in_d, plane, 0)  # the far neighbour, clamped to the edge
        step_h = tl.where(h0 + 1 < in_h, in_w, 0)
        step_w = tl.where(w0 + 1 < in_w, 1, 0)
        index = d0 * plane + h0 * in_w + w0
    else:
        index = (_nearest_axis(wd, td, in_d) * plane + _nearest_axis(wh, th, in_h) * in_w
                 + _nearest_axis(ww, tw, in_w))
    volume_size = in_d * plane
    out_size = out_d * out_h * out_w
    for channel in range(0, channels):
        row = sample.to(tl.int64) * channels + channel
        src = src_ptr + row * volume_size + index
        if LINEAR:
            v000 = tl.load(src, mask=valid, other=0).to(real)
            v001 = tl.load(src + step_w, mask=valid, other=0).to(real)
            v010 = tl.load(src + step_h, mask=valid, other=0).to(real)
            v011 = tl.load(src + step_h + step_w, mask=valid, other=0).to(real)
            v100 = tl.load(src + step_d, mask=valid, other=0).to(real)
            v101 = tl.load(src + step_d + step_w, mask=valid, other=0).to(real)
            v110 = tl.load(src + step_d + step_h, mask=valid, other=0).to(real)
            v111 = tl.load(src + step_d + step_h + step_w, mask=valid, other=0).to(real)
            near = (v000 * (1 - tw) + v001 * tw) * (1 - th) + (v010 * (1 - tw) + v011 * tw) * th
            far = (v100 * (1 - tw) + v101 * tw) * (1 - th) + (v110 * (1 - tw) + v111 * tw) * th
            value = (near * (1 - td) + far * td).to(out_ptr.dtype.element_ty)
        else:
            value = tl.load(src, mask=valid, other=0)
        if ZEROS:
            value = tl.where(inside, value, tl.load(fill_ptr + row))
        tl.store(out_ptr + row * out_size + offsets, value, mask=valid)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def sample_affine_triton(volume: torch.Tensor, maps: np.ndarray, out_shape: Sequence[int], *, mode: str,
                         padding_mode: str, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Resample ``[B, C, D, H, W]`` along one general voxel map per sample, in one fused Triton kernel.

    Equal to :func:`gpuprep.functional.resample.resample` with the same maps (within float
    rounding for images; labels exactly, except at exact rounding ties, see the module
    docstring) without building the sampling grid that ``grid_sample`` needs.

    Parameters
    ----------
    volume:
        ``[B, C, D, H, W]`` on CUDA (CPU tensors only under ``TRITON_INTERPRET=1``): float16,
        bfloat16, float32 or float64 images, or integer/bool label maps (``mode="nearest"``).
    maps:
        ``[B, 4, 4]`` float64 output-voxel to input-voxel maps, one per sample (or one ``[4, 4]``).
    out_shape:
        Spatial shape ``(D, H, W)`` of the output.
    mode:
        ``"linear"`` (trilinear) or ``"nearest"``.
    padding_mode:
        ``"zeros"``: ``fill`` beyond half a voxel outside the input; ``"border"``: the clamped edge.
    fill:
        The constant of ``"zeros"`` padding: a number or a tensor broadcastable to
        ``[B, C, 1, 1, 1]``, cast to the volume's dtype (as the torch path does).

    Returns
    -------
    torch.Tensor
        ``[B, C, *out_shape]``, the volume's dtype and device.

    Example
    -------
    Needs a CUDA device (or ``TRITON_INTERPRET=1``), so the call is skipped in the doctests:

    >>> from gpuprep.functional.grid import scaling_map
    >>> x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    >>> maps = scaling_map((2, 2, 2), (4, 4, 4))[None]
    >>> sample_affine_triton(x.cuda(), maps, (4, 4, 4), mode="linear", padding_mode="zeros").shape  # doctest: +SKIP
    torch.Size([1, 1, 4, 4, 4])
    """
    if triton is None:
        raise ImportError("sample_affine_triton needs triton (it ships with the CUDA builds of torch)")
    maps = _check(volume, maps, out_shape, mode, padding_mode)
    out_shape = tuple(int(n) for n in out_shape)
    batch, channels = volume.shape[:2]
    labels = volume.dtype == torch.bool
    source = (volume.view(torch.uint8) if labels else volume).contiguous()
    map_rows = _split_maps(maps, out_shape, wide=volume.dtype == torch.float64).to(volume.device)
    fill_values = _fill_values(source, fill, batch, channels)
    out = torch.empty((batch, channels, *out_shape), dtype=source.dtype, device=volume.device)
    n_out = out_shape[0] * out_shape[1] * out_shape[2]
    if out.numel() == 0 or source.numel() == 0:
        return out.view(torch.bool) if labels else out
    # The torch path's inside test, |normalised| <= 1 + 1/(n-1) + 1e-6, in input voxels.
    tolerance = [1e-6 * max(n - 1, 1) / 2 for n in source.shape[2:]]
    launch = (triton.cdiv(n_out, BLOCK), batch)
    # Triton launches on the current CUDA device: make it the volume's.
    with torch.cuda.device(volume.device) if volume.is_cuda else contextlib.nullcontext():
        _sample_affine_kernel[launch](source, out, map_rows, fill_values, channels, *source.shape[2:], *out_shape,
                                      *tolerance, LINEAR=mode == "linear", ZEROS=padding_mode == "zeros",
                                      BLOCK=BLOCK, enable_fp_fusion=True)  # explicit: Triton 3.10 changes the default
    return out.view(torch.bool) if labels else out


def _check(volume: torch.Tensor, maps: np.ndarray, out_shape: Sequence[int], mode: str, padding_mode: str
           ) -> np.ndarray:
    if volume.ndim != 5:
        raise ValueError(f"volume must be [B, C, D, H, W], got shape {tuple(volume.shape)}")
    if volume.device.type != "cuda" and not interpreting():
        raise ValueError(f"sample_affine_triton needs a CUDA volume (or TRITON_INTERPRET=1), got {volume.device}")
    check_point_sampling(volume, mode, padding_mode)
    if len(out_shape) != 3:
        raise ValueError(f"out_shape must be (D, H, W), got {tuple(out_shape)}")
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 2:
        maps = np.broadcast_to(maps, (volume.shape[0], 4, 4))
    if maps.shape != (volume.shape[0], 4, 4):
        raise ValueError(f"maps must be [B, 4, 4] with B = {volume.shape[0]}, got shape {maps.shape}")
    if max(math.prod(volume.shape[2:]), math.prod(out_shape)) >= 2**31 - BLOCK:
        raise ValueError("the kernel indexes one channel's voxels with int32: volumes must have under 2**31 voxels")
    return maps


def _fill_values(volume: torch.Tensor, fill: float | torch.Tensor, batch: int, channels: int) -> torch.Tensor:
    """``fill`` as a contiguous ``[B * C]`` tensor of the volume's dtype (as ``resample`` casts it)."""
    value = fill_tensor(volume, fill)
    if value is None:  # the number 0
        return torch.zeros(batch * channels, dtype=volume.dtype, device=volume.device)
    return value.reshape(batch * channels).contiguous()


def _split_maps(maps: np.ndarray, out_shape: tuple[int, ...], wide: bool) -> torch.Tensor:
    """``[B, 24]``: rows 0..2 of every map as ``hi`` (12 numbers) then ``lo`` (12), float32.

    ``hi`` rounds each coefficient to a multiple of ``2**-QUANTUM``, so ``hi @ (d, h, w, 1)`` is
    exact in float32 while its terms and sums stay under ``2**(24 - QUANTUM)``; ``lo`` is the
    remainder (at most ``2**-(QUANTUM + 1)``). Float64 (``hi`` the map, ``lo`` 0) for float64
    volumes and for maps that reach past that bound.
    """
    rows = np.array(maps[:, :3, :], dtype=np.float64)
    hi = np.round(rows * 2.0**QUANTUM) / 2.0**QUANTUM
    # The largest partial sum of hi @ (d, h, w, 1) over the output grid.
    reach = np.abs(hi[..., 3]) + np.abs(hi[..., :3]) @ (np.asarray(out_shape, dtype=np.float64) - 1)
    if wide or not reach.max() < 2.0 ** (24 - QUANTUM):
        return torch.from_numpy(np.concatenate([rows, np.zeros_like(rows)], 1).reshape(len(rows), 24))
    return torch.from_numpy(np.concatenate([hi, rows - hi], 1).reshape(len(rows), 24).astype(np.float32))
