"""A fused Triton sampler for per-sample general maps: no materialised sampling grid.

The CUDA path of :func:`gpuprep.functional.resample.resample` for distinct rotations/shears per
sample builds a ``[B, D, H, W, 3]`` grid and a mask, then calls ``grid_sample``: it writes and
reads the grid (three floats per output voxel) besides the volume. The kernel here computes every
output voxel's source coordinate from the sample's ``[3, 4]`` map on the fly, so it reads the input
and writes the output, nothing more.

Design: a 2D launch, axis 0 over blocks of ``BLOCK`` output voxels (flat ``D*H*W`` index), axis 1
over samples. A program loads its sample's 12 map coefficients (a small device tensor), computes
the source coordinate of each of its voxels once, and loops over the channels, so coordinates,
indices and weights serve every channel. Coordinates are float32 (float64 for float64 volumes);
float16/bfloat16 images are interpolated in float32 and rounded once when stored.

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

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton (CPU-only torch): the module imports, the sampler raises
    triton = None
    tl = None

BLOCK = 512
_MAP_ENTRIES = 12  # rows 0..2 of each [4, 4] map


def _jit(function):
    return triton.jit(function) if triton is not None else function


@_jit
def _sample_affine_kernel(src_ptr, out_ptr, map_ptr, fill_ptr, channels,
                          in_d, in_h, in_w, out_d, out_h, out_w, tol_d, tol_h, tol_w,
                          LINEAR: tl.constexpr, ZEROS: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    sample = tl.program_id(1)
    offsets = block * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < out_d * out_h * out_w
    w = offsets % out_w
    h = (offsets // out_w) % out_h
    d = offsets // (out_w * out_h)
    coefficients = map_ptr + sample * 12
    m00 = tl.load(coefficients + 0)
    fd, fh, fw = d.to(m00.dtype), h.to(m00.dtype), w.to(m00.dtype)
    # Source coordinate along input axes D, H, W: row r of the map applied to (d, h, w, 1).
    zd = tl.load(coefficients + 3) + m00 * fd + tl.load(coefficients + 1) * fh + tl.load(coefficients + 2) * fw
    zh = (tl.load(coefficients + 7) + tl.load(coefficients + 4) * fd + tl.load(coefficients + 5) * fh
          + tl.load(coefficients + 6) * fw)
    zw = (tl.load(coefficients + 11) + tl.load(coefficients + 8) * fd + tl.load(coefficients + 9) * fh
          + tl.load(coefficients + 10) * fw)
    inside = ((zd >= -0.5 - tol_d) & (zd <= in_d - 0.5 + tol_d) & (zh >= -0.5 - tol_h) & (zh <= in_h - 0.5 + tol_h)
              & (zw >= -0.5 - tol_w) & (zw <= in_w - 0.5 + tol_w))
    # Within half a voxel outside (and everywhere under "border") the clamped edge is read.
    zd = tl.minimum(tl.maximum(zd, 0.0), in_d - 1.0)
    zh = tl.minimum(tl.maximum(zh, 0.0), in_h - 1.0)
    zw = tl.minimum(tl.maximum(zw, 0.0), in_w - 1.0)
    plane = in_h * in_w
    if LINEAR:
        fd0, fh0, fw0 = tl.floor(zd), tl.floor(zh), tl.floor(zw)
        td, th, tw = zd - fd0, zh - fh0, zw - fw0
        d0, h0, w0 = fd0.to(tl.int32), fh0.to(tl.int32), fw0.to(tl.int32)
        step_d = tl.where(d0 + 1 < in_d, plane, 0)  # the far neighbour, clamped to the edge
        step_h = tl.where(h0 + 1 < in_h, in_w, 0)
        step_w = tl.where(w0 + 1 < in_w, 1, 0)
        index = d0 * plane + h0 * in_w + w0
    else:
        index = ((tl.minimum(tl.floor(zd + 0.5).to(tl.int32), in_d - 1) * plane)
                 + tl.minimum(tl.floor(zh + 0.5).to(tl.int32), in_h - 1) * in_w
                 + tl.minimum(tl.floor(zw + 0.5).to(tl.int32), in_w - 1))
    volume_size = in_d * plane
    out_size = out_d * out_h * out_w
    for channel in range(0, channels):
        row = sample.to(tl.int64) * channels + channel
        src = src_ptr + row * volume_size + index
        if LINEAR:
            v000 = tl.load(src, mask=valid, other=0).to(zd.dtype)
            v001 = tl.load(src + step_w, mask=valid, other=0).to(zd.dtype)
            v010 = tl.load(src + step_h, mask=valid, other=0).to(zd.dtype)
            v011 = tl.load(src + step_h + step_w, mask=valid, other=0).to(zd.dtype)
            v100 = tl.load(src + step_d, mask=valid, other=0).to(zd.dtype)
            v101 = tl.load(src + step_d + step_w, mask=valid, other=0).to(zd.dtype)
            v110 = tl.load(src + step_d + step_h, mask=valid, other=0).to(zd.dtype)
            v111 = tl.load(src + step_d + step_h + step_w, mask=valid, other=0).to(zd.dtype)
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
    coordinate = torch.float64 if volume.dtype == torch.float64 else torch.float32
    map_rows = torch.as_tensor(np.array(maps[:, :3, :]).reshape(batch, _MAP_ENTRIES),
                               dtype=coordinate).to(volume.device)
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
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
    if not volume.is_floating_point() and mode != "nearest":
        raise TypeError(f"{volume.dtype} volumes (labels) can only be resampled with mode='nearest'")
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
    value = fill if isinstance(fill, torch.Tensor) else torch.tensor(float(fill))
    value = value.to(device=volume.device, dtype=volume.dtype)
    if value.ndim == 2:  # [B, C]
        value = value[..., None, None, None]
    elif value.ndim < 5:  # one number
        value = value.reshape(1, 1, 1, 1, 1)
    return value.expand(batch, channels, 1, 1, 1).reshape(batch * channels).contiguous()
