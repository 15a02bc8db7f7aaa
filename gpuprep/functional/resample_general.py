"""Resampling along general maps (rotations, shears): ``grid_sample`` and its helpers.

:func:`gpuprep.functional.resample.resample` sends maps that mix axes here. Samples may each
have their own map (random augmentation): one sampling grid is built for the batch, from three
outer sums (several times faster on the CPU than ``affine_grid``), and inside
:class:`GridCache` an image and its label maps reuse it. The boundary rule is the package's:
within half a voxel outside the input the edge is read, beyond it 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .axis_operators import _band as band_matrix
from .axis_operators import apply_axis_operator, cubic_bspline_prefilter_matrix, cubic_bspline_weights
from .filters import gaussian_filter
from .grid import axis_permutation, normalized_theta


def batchable(volume: torch.Tensor, maps: np.ndarray, mode: str) -> bool:
    return (
        mode in ("linear", "nearest")
        and (volume.is_floating_point() or volume.dtype in _EXACT_IN_FLOAT32)
        and all(axis_permutation(m) is None for m in maps)
    )


# Values of these dtypes survive a round trip through float32 exactly.
_EXACT_IN_FLOAT32 = (torch.uint8, torch.int8, torch.int16, torch.bool)


def general_batched(volume, maps, out_shape, mode, padding_mode, cache: GridCache | None = None) -> torch.Tensor:
    """Linear or nearest resampling with one (possibly different) general map per sample.

    Nearest neighbour here is ``grid_sample``'s, which rounds exact ties (a point midway between
    two voxels, which random rotations do not produce) half to even; :func:`nearest_general`,
    used for a single map, rounds them up like ``scipy.ndimage``.
    """
    in_shape = tuple(volume.shape[2:])
    work = volume if volume.is_floating_point() else volume.float()
    grid, inside = _grid_and_mask(np.stack(maps), in_shape, tuple(out_shape), work.dtype, volume.device, cache)
    out = F.grid_sample(work, grid, mode="bilinear" if mode == "linear" else "nearest", padding_mode="border",
                        align_corners=True)
    if padding_mode == "zeros":
        out.mul_(inside)  # grid_sample's output is fresh: masking in place saves a volume
    return out if volume.is_floating_point() else out.round().to(volume.dtype)


class GridCache:
    """Sampling grids reused while one chain resamples several keys (an image and its label maps).

    The sampling grid of a general map is as large as the output times three, and building it
    costs as much as sampling, so the fusion engine makes one cache per resampling of a chain
    and passes it to every key's :func:`~gpuprep.functional.resample.resample` and
    :func:`~gpuprep.functional.warp.warp`; without one, nothing is reused. It keeps one entry
    per kind of value (the first element of the key): the maps of the key being resampled now.
    A cache belongs to one call, so threads never share one.

    Example
    -------
    >>> cache = GridCache()
    >>> cache.get(("grid", 1), lambda: "built"), cache.get(("grid", 1), lambda: "rebuilt")
    ('built', 'built')
    """

    def __init__(self) -> None:
        self._entries: dict[Any, tuple[tuple, Any]] = {}

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        """The value stored under ``key``, or ``build()`` (stored, replacing the entry of its kind)."""
        entry = self._entries.get(key[0])
        if entry is not None and entry[0] == key:
            return entry[1]
        value = build()
        self._entries[key[0]] = (key, value)
        return value


def _grid_and_mask(maps, in_shape, out_shape, dtype, device, cache: GridCache | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    build = functools.partial(_build_grid_and_mask, maps, in_shape, out_shape, dtype, device)
    if cache is None:
        return build()
    return cache.get(("grid", maps.tobytes(), in_shape, out_shape, dtype, str(device)), build)


def _build_grid_and_mask(maps, in_shape, out_shape, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    theta = torch.as_tensor(np.stack([normalized_theta(m, in_shape, out_shape) for m in maps]),
                            dtype=dtype, device=device)
    grid = _affine_grid(theta, out_shape)
    return grid, inside_grid(grid, in_shape)


def _affine_grid(theta: torch.Tensor, out_shape) -> torch.Tensor:
    """``F.affine_grid(theta, ..., align_corners=True)`` built from three outer sums (about 3x faster on CPU)."""
    batch = theta.shape[0]
    depth, height, width = out_shape
    axes = [torch.linspace(-1, 1, n, dtype=theta.dtype, device=theta.device) if n > 1
            else torch.zeros(1, dtype=theta.dtype, device=theta.device) for n in (width, height, depth)]
    grid = torch.empty((batch, depth, height, width, 3), dtype=theta.dtype, device=theta.device)
    x, y, z = axes  # normalised W, H, D coordinates of the output
    for component in range(3):
        row = theta[:, component]  # [B, 4]: coefficients of x, y, z and the constant
        torch.add(
            (row[:, 2, None] * z + row[:, 3, None])[:, :, None, None] + (row[:, 1, None] * y)[:, None, :, None],
            (row[:, 0, None] * x)[:, None, None, :],
            out=grid[..., component],
        )
    return grid


def inside_grid(grid: torch.Tensor, in_shape) -> torch.Tensor:
    """``[B, 1, D, H, W]``: sample points of a normalised grid within half a voxel of the input."""
    within = [grid[..., component].abs() <= 1.0 + 1.0 / max(n - 1, 1) + 1e-6  # grid holds (W, H, D)
              for component, n in zip(range(3), reversed(in_shape))]
    return (within[0] & within[1] & within[2])[:, None]


def _inside_mask(voxel_map, in_shape, out_shape, device) -> torch.Tensor:
    """Output voxels whose source lies within half a voxel of the input grid: ``[1, 1, D, H, W]``."""
    axes = [torch.arange(n, device=device, dtype=torch.float64) for n in out_shape]
    mask = torch.ones(out_shape, dtype=torch.bool, device=device)
    for source in range(3):
        row = voxel_map[source]
        coordinate = row[3] + sum(
            row[axis] * axes[axis].view([-1 if a == axis else 1 for a in range(3)]) for axis in range(3)
        )
        mask &= (coordinate >= -0.5 - 1e-9) & (coordinate <= in_shape[source] - 0.5 + 1e-9)
    return mask[None, None]


def linear_general(volume, voxel_map, out_shape, padding_mode, cache: GridCache | None = None):
    return general_batched(volume, np.asarray(voxel_map)[None].repeat(volume.shape[0], 0), out_shape, "linear",
                            padding_mode, cache)


def nearest_general(volume, voxel_map, out_shape, padding_mode):
    """Nearest neighbour by direct indexing: exact for any dtype (labels keep their values)."""
    in_shape = volume.shape[2:]
    device = volume.device
    axes = torch.meshgrid(*(torch.arange(n, device=device, dtype=torch.float64) for n in out_shape), indexing="ij")
    flat = torch.zeros(out_shape, dtype=torch.int64, device=device)
    stride = 1
    for source in reversed(range(3)):
        row = voxel_map[source]
        coordinate = row[3] + row[0] * axes[0] + row[1] * axes[1] + row[2] * axes[2]
        # The 1e-9 makes exact ties round up whatever the float noise (as axis_operators does).
        index = torch.floor(coordinate + (0.5 + 1e-9)).clamp_(0, in_shape[source] - 1).long()
        flat += index * stride
        stride *= in_shape[source]
    batch, channels = volume.shape[:2]
    gathered = volume.reshape(batch, channels, -1)[:, :, flat.reshape(-1)].reshape(batch, channels, *out_shape)
    if padding_mode == "zeros":
        inside = _inside_mask(voxel_map, in_shape, out_shape, device)
        gathered = torch.where(inside, gathered, torch.zeros((), dtype=volume.dtype, device=device))
    return gathered


def cubic_general(volume, voxel_map, out_shape, padding_mode):
    """Cubic B-spline as 8 trilinear fetches of the prefiltered volume (Sigg & Hadwiger, GPU Gems 2)."""
    in_shape = volume.shape[2:]
    coefficients = volume
    for axis, n in enumerate(in_shape):
        coefficients = apply_axis_operator(coefficients, 2 + axis, band_matrix(cubic_bspline_prefilter_matrix(n)))
    device, dtype = volume.device, volume.dtype
    batch = volume.shape[0]
    # Input voxel coordinates of every output voxel, per input axis: [D, H, W].
    axes = torch.meshgrid(*(torch.arange(n, device=device, dtype=torch.float64) for n in out_shape), indexing="ij")
    coords = [voxel_map[s, 3] + voxel_map[s, 0] * axes[0] + voxel_map[s, 1] * axes[1] + voxel_map[s, 2] * axes[2]
              for s in range(3)]
    lookups = []  # per axis: ((position0, weight0), (position1, weight1))
    for coordinate in coords:
        low = torch.floor(coordinate)
        frac = coordinate - low
        w0, w1, w2, w3 = cubic_bspline_weights(frac)
        g0, g1 = w0 + w1, w2 + w3
        lookups.append(((low - 1 + w1 / g0, g0), (low + 1 + w3 / g1, g1)))
    out = torch.zeros((batch, volume.shape[1], *out_shape), dtype=dtype, device=device)
    scale = [2.0 / max(n - 1, 1) for n in in_shape]
    for a in range(2):
        for b in range(2):
            for c in range(2):
                (pa, wa), (pb, wb), (pc, wc) = lookups[0][a], lookups[1][b], lookups[2][c]
                # grid_sample wants (x, y, z) = (W, H, D) in [-1, 1].
                grid = torch.stack([pc * scale[2] - 1, pb * scale[1] - 1, pa * scale[0] - 1], dim=-1)
                grid = grid.to(dtype).expand(batch, *out_shape, 3)
                fetched = F.grid_sample(coefficients, grid, mode="bilinear", padding_mode="border", align_corners=True)
                out += fetched * (wa * wb * wc).to(dtype)
    if padding_mode == "zeros":
        out = out * _inside_mask(voxel_map, in_shape, out_shape, device)
    return out


def antialias(volume: torch.Tensor, voxel_map: np.ndarray) -> torch.Tensor:
    """Gaussian-smooth each input axis by its sampling step before a general resampling.

    ``voxel_map`` is one ``[4, 4]`` map or ``[B, 4, 4]`` (one per sample).
    """
    if not volume.is_floating_point():
        return volume
    footprint = np.abs(np.asarray(voxel_map)[..., :3, :3]).max(axis=-1)  # input voxels per output step
    sigma = np.clip((footprint - 1.0) / 2.0, 0.0, None)
    return gaussian_filter(volume, sigma, truncate=4.0, mode="nearest") if sigma.any() else volume
