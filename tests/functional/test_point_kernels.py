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
    out, inside = np.empty((2, 300, 4), np.float32), np.empty((2, 300), np.bool_)
    kernel(volume, voxel, out, inside)
    expected = _trilinear_channels_last(torch.from_numpy(volume), torch.from_numpy(voxel)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)
    within = np.all((voxel >= 0) & (voxel <= np.array([4, 5, 6])), axis=-1)
    assert within.any() and not within.all()
    np.testing.assert_array_equal(inside, within)


@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (1, 1, 4, 3)])
def test_the_gradient_stack_equals_torch_gradient(shape):
    import gpuprep.functional.transform_models as models

    volume = torch.rand(shape[0], 1, *shape[1:], generator=torch.Generator().manual_seed(1))
    affine = torch.tensor([[0.0, 1.2, 0.0, 4.0], [0.9, 0.0, 0.3, -1.0], [0.0, 0.0, 2.0, 3.0], [0, 0, 0, 1]],
                          dtype=torch.float64).expand(shape[0], 4, 4)
    compiled = models.with_world_gradient(volume, affine)
    kernels = models._point_kernels
    try:
        models._point_kernels = lambda: None
        expected = models.with_world_gradient(volume, affine)
    finally:
        models._point_kernels = kernels
    torch.testing.assert_close(compiled, expected, atol=1e-6, rtol=1e-6)
