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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rounding_helpers_equal_numpy_without_libm(dtype):
    """Ties to even as ``np.rint`` and truncation as ``np.floor`` for the non-negative coordinates the kernels use."""
    import numba

    values = np.concatenate([np.arange(0, 300, 0.25), np.random.default_rng(0).uniform(0, 5000, 2000)]).astype(dtype)

    @numba.njit
    def both(values, rounded, floors):
        for i in range(values.shape[0]):
            rounded[i] = fused_kernels._round_half_even(values[i])
            floors[i] = fused_kernels._as_float_like(np.int64(values[i]), values[i])

    rounded, floors = np.empty_like(values), np.empty_like(values)
    both(values, rounded, floors)
    np.testing.assert_array_equal(rounded, np.rint(values))
    np.testing.assert_array_equal(floors, np.floor(values))
    assert fused_kernels._round_half_even(2.5) == 2.0 and fused_kernels._as_float_like(3, np.float32(1)) == 3.0
