"""The numba kernel of :func:`gpuprep.functional.velocity_field.compose_displacements` (CPU; imported only with numba).

:func:`compose_border` computes ``inner(x) + outer(x + inner(x))`` for every voxel, reading
``outer`` trilinearly with its coordinates clamped to the grid: ``grid_sample``'s
``padding_mode="border"`` with ``align_corners=True``, in one pass and without a sampling grid.
Scaling and squaring (:func:`~gpuprep.functional.velocity_field.integrate_velocity`) calls it
once per squaring, and a deformable registration integrates its velocity at every iteration.

Example
-------
>>> import numpy as np
>>> outer = np.zeros((1, 3, 4, 1, 1), np.float32); outer[0, 0, :, 0, 0] = np.arange(4)
>>> inner = np.zeros_like(outer); inner[0, 0] = 1.0
>>> out = np.empty_like(outer)
>>> compose_border(outer, inner, out)
>>> out[0, 0, :, 0, 0].tolist()
[2.0, 3.0, 4.0, 4.0]
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .numba_threads import jit_pair

__all__ = ["compose_border", "compose_border_serial"]


@numba.njit(cache=True, inline="always")
def _clamped_cell(position, size):
    """The lower corner in ``[0, size - 2]`` and the fraction, of ``position`` clamped to ``[0, size - 1]``."""
    if size == 1:
        return 0, np.float32(0.0)
    clamped = min(max(position, np.float32(0.0)), np.float32(size - 1))
    low = min(math.floor(clamped), size - 2)
    return low, np.float32(clamped - low)


def _compose_border(outer, inner, out):
    """``out[b, :, z, y, x] = inner[b, :, z, y, x] + outer[b, :]`` read at ``(z, y, x) + inner[b, :, z, y, x]``."""
    batch, channels, depth, height, width = outer.shape
    for flat in numba.prange(batch * depth):
        b = flat // depth
        z = flat - b * depth
        for y in range(height):
            for x in range(width):
                z0, fz = _clamped_cell(z + inner[b, 0, z, y, x], depth)
                y0, fy = _clamped_cell(y + inner[b, 1, z, y, x], height)
                x0, fx = _clamped_cell(x + inner[b, 2, z, y, x], width)
                z1, y1, x1 = min(z0 + 1, depth - 1), min(y0 + 1, height - 1), min(x0 + 1, width - 1)
                for c in range(channels):
                    c00 = outer[b, c, z0, y0, x0] + fx * (outer[b, c, z0, y0, x1] - outer[b, c, z0, y0, x0])
                    c01 = outer[b, c, z0, y1, x0] + fx * (outer[b, c, z0, y1, x1] - outer[b, c, z0, y1, x0])
                    c10 = outer[b, c, z1, y0, x0] + fx * (outer[b, c, z1, y0, x1] - outer[b, c, z1, y0, x0])
                    c11 = outer[b, c, z1, y1, x0] + fx * (outer[b, c, z1, y1, x1] - outer[b, c, z1, y1, x0])
                    low = c00 + fy * (c01 - c00)
                    out[b, c, z, y, x] = inner[b, c, z, y, x] + low + fz * (c10 + fy * (c11 - c10) - low)


compose_border, compose_border_serial = jit_pair(_compose_border)
