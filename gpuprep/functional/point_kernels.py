"""The numba kernel of :func:`gpuprep.functional.transform_models.sample_world_fast` (CPU; imported only with numba).

:func:`trilinear_points` reads a channels-last volume at a few thousand scattered voxel
coordinates, all channels of a voxel at once, in parallel over the points: the registration
loop's inner read, where ``grid_sample``'s CPU kernel and a torch gather spend most of their time
on per-call overhead and scattered memory.

Example
-------
>>> import numpy as np
>>> volume = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2, 1)
>>> out, inside = np.empty((1, 1, 1), np.float32), np.empty((1, 1), np.bool_)
>>> trilinear_points(volume, np.array([[[0.5, 0.5, 0.5]]]), out, inside)
>>> out.ravel().tolist(), inside.ravel().tolist()
([3.5], [True])
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .numba_threads import jit_pair


def _trilinear_points(volume, voxel, out, inside):
    """``out[b, n, :]``: trilinear values of ``volume [B, D, H, W, C]`` at ``voxel[b, n]`` (zeros outside).

    ``inside[b, n]``: whether the point lies within the grid, every coordinate in ``[0, size - 1]``.
    """
    batch, depth, height, width, channels = volume.shape
    points = voxel.shape[1]
    for flat in numba.prange(batch * points):
        b = flat // points
        n = flat - b * points
        z, y, x = voxel[b, n, 0], voxel[b, n, 1], voxel[b, n, 2]
        z0, y0, x0 = math.floor(z), math.floor(y), math.floor(x)
        fz, fy, fx = np.float32(z - z0), np.float32(y - y0), np.float32(x - x0)
        inside[b, n] = 0.0 <= z <= depth - 1 and 0.0 <= y <= height - 1 and 0.0 <= x <= width - 1
        if 0 <= z0 < depth - 1 and 0 <= y0 < height - 1 and 0 <= x0 < width - 1:
            # all eight neighbours inside (nearly every point): nested linear interpolations
            for c in range(channels):
                c00 = volume[b, z0, y0, x0, c] + fx * (volume[b, z0, y0, x0 + 1, c] - volume[b, z0, y0, x0, c])
                c01 = volume[b, z0, y0 + 1, x0, c] + fx * (volume[b, z0, y0 + 1, x0 + 1, c]
                                                           - volume[b, z0, y0 + 1, x0, c])
                c10 = volume[b, z0 + 1, y0, x0, c] + fx * (volume[b, z0 + 1, y0, x0 + 1, c]
                                                           - volume[b, z0 + 1, y0, x0, c])
                c11 = volume[b, z0 + 1, y0 + 1, x0, c] + fx * (volume[b, z0 + 1, y0 + 1, x0 + 1, c]
                                                               - volume[b, z0 + 1, y0 + 1, x0, c])
                low = c00 + fy * (c01 - c00)
                out[b, n, c] = low + fz * (c10 + fy * (c11 - c10) - low)
            continue
        for c in range(channels):
            out[b, n, c] = 0.0
        for corner in range(8):
            iz, iy, ix = z0 + (corner >> 2) % 2, y0 + (corner >> 1) % 2, x0 + corner % 2
            if iz < 0 or iz >= depth or iy < 0 or iy >= height or ix < 0 or ix >= width:
                continue
            wz = fz if (corner >> 2) % 2 else np.float32(1.0) - fz
            wy = fy if (corner >> 1) % 2 else np.float32(1.0) - fy
            wx = fx if corner % 2 else np.float32(1.0) - fx
            weight = wz * wy * wx
            for c in range(channels):
                out[b, n, c] += weight * volume[b, iz, iy, ix, c]


@numba.njit(cache=True, inline="always")
def _central_difference(values, b, z, y, x, axis):
    """``torch.gradient``'s derivative along ``axis`` at one voxel: central inside, one-sided at the ends."""
    size = values.shape[1 + axis]
    if size < 2:
        return np.float32(0.0)
    i = (z, y, x)[axis]
    low, high = max(i - 1, 0), min(i + 1, size - 1)
    if axis == 0:
        difference = values[b, high, y, x] - values[b, low, y, x]
    elif axis == 1:
        difference = values[b, z, high, x] - values[b, z, low, x]
    else:
        difference = values[b, z, y, high] - values[b, z, y, low]
    return difference / np.float32(high - low)


def _gradient_stack(values, inverse, out):
    """``out[b, z, y, x] = (value, d value / d world)`` of ``values [B, D, H, W]``; ``inverse``: voxels per mm."""
    batch, depth, height, width = values.shape
    for flat in numba.prange(batch * depth):
        b = flat // depth
        z = flat - b * depth
        for y in range(height):
            for x in range(width):
                dz = _central_difference(values, b, z, y, x, 0)
                dy = _central_difference(values, b, z, y, x, 1)
                dx = _central_difference(values, b, z, y, x, 2)
                out[b, z, y, x, 0] = values[b, z, y, x]
                for axis in range(3):
                    out[b, z, y, x, 1 + axis] = (dz * inverse[b, 0, axis] + dy * inverse[b, 1, axis]
                                                 + dx * inverse[b, 2, axis])


@numba.njit(cache=True, inline="always")
def _moving_cell(value, low, scale, bins):
    """The moving sample's raw bin offset, its cell ``floor(t)`` in ``[1, bins - 3]`` and the fraction ``t - cell``."""
    raw = (value - low) * scale
    position = 1.0 + min(max(raw, 0.0), bins - 3.0)
    cell = min(max(math.floor(position), 1), bins - 3)
    return raw, cell, position - cell


def _spread_moving(fixed_bin, weight, moving, low, scale, joint):
    """``joint[b, k, j] += weight * beta3(j - t)`` for every sample (Mattes' histogram, the fixed side binned)."""
    batch, points = moving.shape
    bins = joint.shape[1]
    for b in numba.prange(batch):
        for n in range(points):
            w = weight[b, n]
            if w == 0.0:
                continue
            _, cell, f = _moving_cell(moving[b, n], low[b], scale[b], bins)
            one = 1.0 - f
            row = joint[b, fixed_bin[b, n]]
            row[cell - 1] += w * one * one * one / 6.0
            row[cell] += w * (3.0 * f * f * f - 6.0 * f * f + 4.0) / 6.0
            row[cell + 1] += w * (-3.0 * f * f * f + 3.0 * f * f + 3.0 * f + 1.0) / 6.0
            row[cell + 2] += w * f * f * f / 6.0


def _moving_gradient(fixed_bin, weight, moving, low, scale, gain, out):
    """``out[b, n] = weight * scale * sum_j beta3'(j - t) gain[b, k, j]``: the derivative of MI per moving sample."""
    batch, points = moving.shape
    bins = gain.shape[1]
    for b in numba.prange(batch):
        for n in range(points):
            raw, cell, f = _moving_cell(moving[b, n], low[b], scale[b], bins)
            if weight[b, n] == 0.0 or raw < 0.0 or raw > bins - 3.0:
                out[b, n] = 0.0
                continue
            row = gain[b, fixed_bin[b, n]]
            one = 1.0 - f
            out[b, n] = weight[b, n] * scale[b] * (-0.5 * one * one * row[cell - 1]
                                                   + (1.5 * f * f - 2.0 * f) * row[cell]
                                                   + (-1.5 * f * f + f + 0.5) * row[cell + 1]
                                                   + 0.5 * f * f * row[cell + 2])


trilinear_points, trilinear_points_serial = jit_pair(_trilinear_points)
spread_moving, spread_moving_serial = jit_pair(_spread_moving)
moving_gradient, moving_gradient_serial = jit_pair(_moving_gradient)
gradient_stack, gradient_stack_serial = jit_pair(_gradient_stack)
