"""Gaussian image pyramids that respect voxel spacing, for coarse-to-fine registration.

Each level halves the resolution of the finest axes first, and is made from the next finer
level: an axis is only shrunk while its spacing stays below the level's target spacing, so an
anisotropic scan (say 1 x 1 x 5 mm) keeps its thick axis until the others catch up, as ANTs' and
nnU-Net's pyramids do. Shrinking by an
integer ``step`` is a Gaussian blur (``sigma = step / 2`` voxels) and the mean of each block of
``step`` voxels, which lies at the block's centre; the level's affine says so. The two are
computed as one strided filter per axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .boundary import pad_volume
from .filters import gaussian_kernel1d

__all__ = ["gaussian_pyramid", "pyramid_steps", "shrink_volume"]


def pyramid_steps(spacing: Sequence[float], levels: int) -> list[tuple[int, int, int]]:
    """The integer shrink step per axis of every level, coarsest first (the last level is ``(1, 1, 1)``).

    Level ``l`` (counted from the finest, 0) aims at ``min(spacing) * 2**l`` mm: an axis gets the
    largest power-of-two step that keeps its spacing at or below that target.

    Example
    -------
    >>> pyramid_steps((1.0, 1.0, 4.0), 3)
    [(4, 4, 1), (2, 2, 1), (1, 1, 1)]
    """
    finest = min(spacing)
    steps = []
    for level in range(levels - 1, -1, -1):
        target = finest * 2**level
        steps.append(tuple(int(2 ** np.floor(np.log2(max(target / s, 1.0)) + 1e-9)) for s in spacing))
    return steps  # type: ignore[return-value]


def shrink_volume(volume: torch.Tensor, affine: np.ndarray, step: Sequence[int]) -> tuple[torch.Tensor, np.ndarray]:
    """Blur ``volume [B, C, D, H, W]`` and average blocks of ``step`` voxels; returns it and its new affine.

    Trailing voxels that do not fill a block are dropped. The new voxel ``i`` is the centre of
    old voxels ``i * step .. i * step + step - 1``.

    Example
    -------
    >>> out, affine = shrink_volume(torch.ones(1, 1, 8, 8, 8), np.eye(4), (2, 2, 2))
    >>> tuple(out.shape), float(affine[0, 0]), float(affine[0, 3])
    ((1, 1, 4, 4, 4), 2.0, 0.5)
    """
    step = tuple(int(s) for s in step)
    if step == (1, 1, 1):
        return volume, np.asarray(affine, dtype=np.float64)
    shrunk = volume if volume.is_floating_point() else volume.to(torch.float32)
    for axis, axis_step in enumerate(step):
        if axis_step > 1:
            shrunk = _blur_and_block_mean(shrunk, axis, axis_step)
    scale = np.diag([*step, 1]).astype(np.float64)
    scale[:3, 3] = (np.asarray(step) - 1) / 2.0
    return shrunk, np.asarray(affine, dtype=np.float64) @ scale


def _blur_and_block_mean(volume: torch.Tensor, axis: int, step: int) -> torch.Tensor:
    """Along spatial ``axis``: the Gaussian blur (``sigma = step / 2``, reflect) then the mean of blocks of ``step``.

    Both are linear and shift-invariant, so they are one kernel (the Gaussian convolved with a
    box of ``step``) read at every ``step``-th position only: each output voxel is computed once,
    instead of blurring every voxel and then averaging (about 3x fewer operations per level).
    """
    gaussian = gaussian_kernel1d(step / 2.0)
    kernel = np.convolve(gaussian, np.full(step, 1.0 / step))
    radius = len(gaussian) // 2
    pads = [(0, 0), (0, 0), (0, 0)]
    pads[axis] = (radius, radius)
    padded = pad_volume(volume, pads, "reflect", 0.0)
    dim = 2 + axis
    count = volume.shape[dim] // step
    index: list[slice] = [slice(None)] * 5
    out = None
    for offset, weight in enumerate(kernel.tolist()):
        index[dim] = slice(offset, offset + (count - 1) * step + 1, step)
        part = padded[tuple(index)]
        out = part * weight if out is None else out.add_(part, alpha=weight)
    assert out is not None
    return out


def gaussian_pyramid(volume: torch.Tensor, affine: np.ndarray, levels: int) -> list[tuple[torch.Tensor, np.ndarray]]:
    """``levels`` versions of ``volume`` with their affines, coarsest first (the last is the input).

    Example
    -------
    >>> [tuple(v.shape[2:]) for v, _ in gaussian_pyramid(torch.rand(1, 1, 16, 16, 8), np.diag([1, 1, 2, 1]), 3)]
    [(4, 4, 4), (8, 8, 8), (16, 16, 8)]
    """
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    steps = pyramid_steps(spacing, levels)
    out = [(volume, np.asarray(affine, dtype=np.float64))]
    for finer, coarser in zip(steps[:0:-1], steps[-2::-1]):  # each level from the next finer one (cheaper)
        relative = tuple(c // f for c, f in zip(coarser, finer))
        out.append(shrink_volume(*out[-1], relative))
    return out[::-1]
