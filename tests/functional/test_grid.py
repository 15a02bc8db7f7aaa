"""The coordinate convention: voxel maps, their axis structure and grid_sample's normalised coordinates."""

from __future__ import annotations

import numpy as np
import torch

from gpuprep.functional.grid import normalized_theta
from tests.functional.test_resample import _rotation_map


def test_normalized_theta_agrees_with_voxel_map():
    """affine_grid(normalized_theta) points at M @ voxel, converted back to voxel units."""
    voxel_map = _rotation_map()
    in_shape, out_shape = (5, 6, 7), (4, 8, 3)
    theta = torch.from_numpy(normalized_theta(voxel_map, in_shape, out_shape))[None]
    grid = torch.nn.functional.affine_grid(theta, [1, 1, *out_shape], align_corners=True)[0].numpy()
    voxel = (grid[..., ::-1] + 1) / 2 * (np.array(in_shape) - 1)  # back to (i, j, k) input voxels
    out_grid = np.stack(np.meshgrid(*[np.arange(n) for n in out_shape], indexing="ij"), -1)
    expected = out_grid @ voxel_map[:3, :3].T + voxel_map[:3, 3]
    np.testing.assert_allclose(voxel, expected, atol=1e-9)
