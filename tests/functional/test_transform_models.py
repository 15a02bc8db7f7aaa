"""Transform models: Rodrigues against SciPy, world matrices, centres of mass, sampling at world points."""

import numpy as np
import pytest
import torch
from scipy.ndimage import center_of_mass as scipy_center_of_mass
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from gpuprep.functional.transform_models import (
    center_of_mass,
    rotation_from_vector,
    sample_world,
    sample_world_fast,
    vector_from_rotation,
    with_world_gradient,
    world_matrix,
)


def test_rotation_vectors_equal_scipys_and_invert():
    vectors = np.random.default_rng(0).normal(scale=0.8, size=(6, 3))
    vectors[0] = 0.0  # the identity
    vectors[1] = [1e-6, -2e-6, 0.0]  # near it, where the series are used
    ours = rotation_from_vector(torch.from_numpy(vectors)).numpy()
    np.testing.assert_allclose(ours, Rotation.from_rotvec(vectors).as_matrix(), atol=1e-12)
    back = vector_from_rotation(torch.from_numpy(ours)).numpy()
    np.testing.assert_allclose(back, vectors, atol=1e-9)


def test_rotation_is_differentiable_at_zero():
    vector = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rotation_from_vector, (vector,))


def test_world_matrix_keeps_the_centre_and_translates():
    linear = torch.from_numpy(Rotation.from_rotvec([0.1, 0.2, -0.3]).as_matrix())[None]
    center = torch.tensor([[10.0, -5.0, 3.0]], dtype=torch.float64)
    shift = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    matrix = world_matrix(linear, shift, center)[0]
    moved = matrix[:3, :3] @ center[0] + matrix[:3, 3]
    torch.testing.assert_close(moved, center[0] + shift[0])


def test_center_of_mass_equals_scipys_in_world_coordinates():
    volume = np.random.default_rng(1).random((2, 1, 9, 7, 8))
    affine = np.array([[0.0, 2.0, 0.0, 5.0], [1.5, 0.0, 0.0, -3.0], [0.0, 0.0, 1.0, 1.0], [0, 0, 0, 1]])
    ours = center_of_mass(torch.from_numpy(volume), torch.from_numpy(affine)).numpy()
    for index in range(2):
        voxel = np.array(scipy_center_of_mass(volume[index, 0]))
        np.testing.assert_allclose(ours[index], affine[:3, :3] @ voxel + affine[:3, 3], rtol=1e-5)


def test_sampling_at_world_points_equals_map_coordinates():
    rng = np.random.default_rng(2)
    volume = rng.random((1, 1, 6, 7, 8)).astype(np.float32)
    affine = np.diag([2.0, 1.0, 0.5, 1.0])
    affine[:3, 3] = [1.0, -2.0, 0.5]
    voxel = rng.uniform([-0.8, -0.8, -0.8], [5.8, 6.8, 7.8], size=(50, 3))  # some beyond the grid
    world = voxel @ affine[:3, :3].T + affine[:3, 3]
    expected = map_coordinates(volume[0, 0].astype(np.float64), voxel.T, order=1, mode="grid-constant", cval=0.0)
    to_voxel = torch.from_numpy(np.linalg.inv(affine))[None]
    points = torch.from_numpy(world)[None]
    ours = sample_world(torch.from_numpy(volume), to_voxel, points)[0, 0].numpy()
    fast = sample_world_fast(with_world_gradient(torch.from_numpy(volume), torch.from_numpy(affine)[None]),
                             to_voxel, points)[0, 0].detach().numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(fast, expected, atol=1e-5)


@pytest.mark.parametrize("numba_path", [True, False])
def test_fast_sampling_gradient_is_the_interpolated_world_gradient(numba_path, monkeypatch):
    import gpuprep.functional.transform_models as models

    if not numba_path:
        monkeypatch.setattr(models, "_point_kernels", lambda: None)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (8, 9, 10)], indexing="ij")
    volume = torch.from_numpy(3.0 * x - 2.0 * y + 0.5 * z)[None, None]  # linear: exact central differences
    affine = torch.diag(torch.tensor([2.0, 1.0, 0.5, 1.0], dtype=torch.float64))[None]
    stacked = with_world_gradient(volume, affine)
    points = torch.tensor([[[4.2, 3.3, 2.1], [9.0, 5.5, 1.25]]], dtype=torch.float64, requires_grad=True)
    values = sample_world_fast(stacked, torch.linalg.inv(affine), points)
    values.sum().backward()
    expected = torch.tensor([3.0 / 2.0, -2.0, 0.5 / 0.5], dtype=torch.float64)  # per mm
    torch.testing.assert_close(points.grad[0], expected.expand(2, 3), atol=1e-5, rtol=0)
    expected_values = [3 * 2.1 - 2 * 3.3 + 0.5 * 4.2, 3 * 4.5 - 2 * 5.5 + 0.5 * 2.5]  # the voxel coordinates
    np.testing.assert_allclose(values.detach().numpy()[0, 0], expected_values, rtol=1e-5)


@pytest.mark.parametrize("numba_path", [True, False])
def test_voxel_sampling_gives_the_voxel_gradient_and_which_points_are_inside(numba_path, monkeypatch):
    import gpuprep.functional.transform_models as models

    if not numba_path:
        monkeypatch.setattr(models, "_point_kernels", lambda: None)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (8, 9, 10)], indexing="ij")
    volume = torch.from_numpy(3.0 * x - 2.0 * y + 0.5 * z)[None, None]
    stacked = with_world_gradient(volume, torch.eye(4, dtype=torch.float64)[None])
    voxel = torch.tensor([[[4.2, 3.3, 2.1], [7.0, 8.0, 9.0], [7.5, 1.0, 1.0], [-0.1, 2.0, 2.0]]],
                         dtype=torch.float64, requires_grad=True)
    values, inside = models.sample_voxels_fast(stacked, voxel)
    assert inside.tolist() == [[True, True, False, False]]  # [0, size - 1] on every axis
    np.testing.assert_allclose(values.detach().numpy()[0, 0, :2], [3 * 4.2 - 2 * 3.3 + 0.5 * 2.1, 21 - 16 + 4.5],
                               rtol=1e-5)
    values[0, 0, 0].backward()
    torch.testing.assert_close(voxel.grad[0, 0], torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64), atol=1e-5,
                               rtol=0)
    assert voxel.grad.dtype == torch.float64
