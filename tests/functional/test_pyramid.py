"""Gaussian pyramids: steps that respect spacing, block means at block centres, levels from finer levels."""

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from gpuprep.functional.pyramid import gaussian_pyramid, pyramid_steps, shrink_volume


def test_steps_shrink_the_finest_axes_first():
    assert pyramid_steps((1.0, 1.0, 1.0), 3) == [(4, 4, 4), (2, 2, 2), (1, 1, 1)]
    assert pyramid_steps((1.0, 1.0, 3.0), 3) == [(4, 4, 1), (2, 2, 1), (1, 1, 1)]
    assert pyramid_steps((0.5, 1.0, 2.0), 4) == [(8, 4, 2), (4, 2, 1), (2, 1, 1), (1, 1, 1)]


def test_a_shrunk_volume_is_the_block_mean_of_scipys_blur_and_keeps_world_positions():
    volume = np.random.default_rng(0).random((1, 1, 12, 10, 9)).astype(np.float32)
    affine = np.array([[0.0, 1.2, 0.0, 4.0], [0.9, 0.0, 0.0, -1.0], [0.0, 0.0, 2.0, 3.0], [0, 0, 0, 1]])
    out, new_affine = shrink_volume(torch.from_numpy(volume), affine, (2, 2, 1))
    blurred = gaussian_filter(volume[0, 0].astype(np.float64), (1.0, 1.0, 0.0), mode="reflect")
    expected = blurred[:12, :10, :9].reshape(6, 2, 5, 2, 9).mean(axis=(1, 3))
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-5)
    # the new voxel (i, j, k) is the centre of old voxels (2i, 2i + 1), (2j, 2j + 1), k
    centre = affine @ np.array([2 * 3 + 0.5, 2 * 1 + 0.5, 4, 1])
    np.testing.assert_allclose(new_affine @ np.array([3, 1, 4, 1]), centre)


def test_pyramid_levels_are_coarsest_first_and_end_with_the_input():
    volume = torch.rand(2, 1, 16, 12, 8)
    levels = gaussian_pyramid(volume, np.diag([1.0, 1.0, 2.0, 1.0]), 3)
    assert [tuple(v.shape[2:]) for v, _ in levels] == [(4, 3, 4), (8, 6, 8), (16, 12, 8)]
    assert levels[-1][0] is volume
    np.testing.assert_allclose(np.linalg.norm(levels[0][1][:3, :3], axis=0), [4.0, 4.0, 4.0])
