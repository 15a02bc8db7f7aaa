"""World-space affine helpers against scipy's rotations and nibabel's affine application."""

from __future__ import annotations

import numpy as np
import pytest
from nibabel.affines import apply_affine
from scipy.spatial.transform import Rotation

from gpuprep.functional.affine import grid_center, rotation_matrix, shear_matrix, world_transform
from tests.conftest import oblique_affine


@pytest.mark.parametrize("degrees", [(0, 0, 90), (30, 0, 0), (10, -20, 35), (-170, 45, 5)])
def test_rotation_matrix_is_scipys_extrinsic_xyz_rotation(degrees):
    """Rotations about the world x, then y, then z axes (Rz @ Ry @ Rx): scipy's 'xyz' Euler angles."""
    reference = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    np.testing.assert_allclose(rotation_matrix(degrees), reference, atol=1e-12)


def test_rotation_matrix_turns_x_towards_y_about_z():
    np.testing.assert_allclose(rotation_matrix([0, 0, 90]) @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-12)


def test_shear_matrix_moves_each_axis_along_the_later_ones():
    sxy, sxz, syz = 0.2, -0.3, 0.5
    shear = shear_matrix([sxy, sxz, syz])
    point = np.array([1.5, -2.0, 4.0])
    x, y, z = point
    np.testing.assert_allclose(shear @ point, [x + sxy * y + sxz * z, y + syz * z, z])
    assert np.linalg.det(shear) == pytest.approx(1.0)  # volume preserving


def test_world_transform_turns_about_the_centre_then_translates():
    linear = rotation_matrix([10, 20, 30]) @ np.diag([1.1, 0.9, 1.0])
    center, translation = np.array([12.0, -4.0, 30.0]), np.array([1.0, 2.0, -3.0])
    matrix = world_transform(linear, center, translation)
    points = np.random.default_rng(0).normal(size=(5, 3)) * 50
    expected = (points - center) @ linear.T + center + translation
    np.testing.assert_allclose(apply_affine(matrix, points), expected, atol=1e-12)
    np.testing.assert_allclose(apply_affine(matrix, center), center + translation, atol=1e-12)
    np.testing.assert_array_equal(matrix[3], [0, 0, 0, 1])


@pytest.mark.parametrize("shape", [(10, 12, 9), (1, 5, 2)])
def test_grid_center_is_the_world_position_of_the_middle_voxel_coordinate(shape):
    affine = oblique_affine()
    expected = apply_affine(affine, (np.array(shape) - 1) / 2)
    np.testing.assert_allclose(grid_center(affine, shape), expected, atol=1e-12)
