"""The numba point sampler against the torch path it replaces."""

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from gpuprep.functional.point_kernels import trilinear_points, trilinear_points_serial
from gpuprep.functional.transform_models import _trilinear_channels_last


@pytest.mark.parametrize("kernel", [trilinear_points, trilinear_points_serial])
def test_the_kernel_equals_the_torch_gather(kernel):
    rng = np.random.default_rng(0)
    volume = rng.random((2, 5, 6, 7, 4)).astype(np.float32)
    voxel = rng.uniform(-1.5, 7.5, size=(2, 300, 3))  # many beyond the grid
    out = np.empty((2, 300, 4), np.float32)
    kernel(volume, voxel, out)
    expected = _trilinear_channels_last(torch.from_numpy(volume), torch.from_numpy(voxel)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)
