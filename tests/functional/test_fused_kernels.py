"""The numba kernels called directly (their equality with the torch path is in test_fused_sampler.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from gpuprep.functional import fused_kernels


def test_identity_map_copies_and_shifted_map_pads_with_fill():
    volume = np.arange(2 * 3 * 4 * 5 * 6, dtype=np.int16).reshape(2, 3, 4, 5, 6)
    maps = np.zeros((2, 3, 4))
    maps[:, :, :3] = np.eye(3)
    maps[1, 2, 3] = 2.0  # sample 1 reads 2 voxels further along W
    bounds = np.array([-0.5 - 1e-9, 3.5 + 1e-9, 4.5 + 1e-9, 5.5 + 1e-9, 0.5 + 1e-9])
    fill = np.full((2, 3), -7, np.int16)
    out = np.empty_like(volume)
    fused_kernels.voxel_nearest(volume, maps, bounds, True, fill, out)
    np.testing.assert_array_equal(out[0], volume[0])
    np.testing.assert_array_equal(out[1, ..., :4], volume[1, ..., 2:])
    assert (out[1, ..., 4:] == -7).all()
