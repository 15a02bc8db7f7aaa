"""The numba kernel of :func:`gpuprep.functional.transform_models.sample_world_fast` (CPU; imported only with numba).

:func:`trilinear_points` reads a channels-last volume at a few thousand scattered voxel
coordinates, all channels of a voxel at once, in parallel over the points: the registration
loop's inner read, where ``grid_sample``'s CPU kernel and a torch gather spend most of their time
on per-call overhead and scattered memory.

Example
-------
>>> import numpy as np
>>> volume = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2, 1)
>>> out = np.empty((1, 1, 1), np.float32)
>>> trilinear_points(volume, np.array([[[0.5, 0.5, 0.5]]]), out)
>>> out.ravel().tolist()
[3.5]
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .numba_threads import jit_pair


def _trilinear_points(volume, voxel, out):
    """``out[b, n, :]``: trilinear values of ``volume [B, D, H, W, C]`` at ``voxel[b, n]`` (zeros outside)."""
    batch, depth, height, width, channels = volume.shape
    points = voxel.shape[1]
    for flat in numba.prange(batch * points):
        b = flat // points
        n = flat - b * points
        z, y, x = voxel[b, n, 0], voxel[b, n, 1], voxel[b, n, 2]
        z0, y0, x0 = math.floor(z), math.floor(y), math.floor(x)
        fz, fy, fx = np.float32(z - z0), np.float32(y - y0), np.float32(x - x0)
        for c in range(channels):
            out[b, n, c] = 0.0
        for corner in range(8):
            iz, iy, ix = int(z0) + (corner >> 2) % 2, int(y0) + (corner >> 1) % 2, int(x0) + corner % 2
            if iz < 0 or iz >= depth or iy < 0 or iy >= height or ix < 0 or ix >= width:
                continue
            wz = fz if (corner >> 2) % 2 else np.float32(1.0) - fz
            wy = fy if (corner >> 1) % 2 else np.float32(1.0) - fy
            wx = fx if corner % 2 else np.float32(1.0) - fx
            weight = wz * wy * wx
            for c in range(channels):
                out[b, n, c] += weight * volume[b, iz, iy, ix, c]


trilinear_points, trilinear_points_serial = jit_pair(_trilinear_points)
