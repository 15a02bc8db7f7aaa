"""Cubic B-spline displacement fields against scipy's B-spline basis and an explicit sum over control points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from gpuprep.functional.elastic import bspline_basis, bspline_field

BETA3 = BSpline.basis_element([-2, -1, 0, 1, 2], extrapolate=False)


def _reference_basis(n_voxels: int, n_control: int) -> np.ndarray:
    """Control point ``c`` sits at voxel ``(c - 1) * h``, ``h = (n_voxels - 1) / (n_control - 3)`` (ITK's mesh)."""
    spacing = (n_voxels - 1) / (n_control - 3)
    x = np.arange(n_voxels)[:, None] / spacing
    return np.nan_to_num(BETA3(x - (np.arange(n_control)[None, :] - 1)))


@pytest.mark.parametrize(("n_voxels", "n_control"), [(5, 4), (17, 5), (40, 7), (9, 12)])
def test_bspline_basis_is_the_cubic_b_spline_of_itks_mesh(n_voxels, n_control):
    np.testing.assert_allclose(bspline_basis(n_voxels, n_control), _reference_basis(n_voxels, n_control), atol=1e-12)


def test_bspline_basis_reproduces_linear_functions():
    """Partition of unity and linear precision: coefficients on a line give that line at every voxel."""
    n_voxels, n_control = 23, 6
    spacing = (n_voxels - 1) / (n_control - 3)
    coefficients = 2.0 - 0.5 * (np.arange(n_control) - 1) * spacing
    np.testing.assert_allclose(bspline_basis(n_voxels, n_control) @ coefficients, 2.0 - 0.5 * np.arange(n_voxels),
                               atol=1e-12)


def test_bspline_field_is_the_tensor_product_sum_over_control_points(device):
    shape, controls = (9, 7, 8), (5, 4, 6)
    coefficients = np.random.default_rng(0).normal(size=(2, 3, *controls))
    field = bspline_field(torch.from_numpy(coefficients).to(device), shape).cpu().numpy()
    assert field.shape == (2, 3, *shape)
    bases = [_reference_basis(n, c) for n, c in zip(shape, controls)]
    for i, j, k in [(0, 0, 0), (4, 3, 5), (8, 6, 7), (2, 5, 1)]:
        weights = bases[0][i][:, None, None] * bases[1][j][None, :, None] * bases[2][k][None, None, :]
        expected = (coefficients * weights).sum(axis=(2, 3, 4))
        np.testing.assert_allclose(field[:, :, i, j, k], expected, atol=1e-12)


def test_constant_control_points_give_a_constant_field():
    field = bspline_field(torch.full((1, 3, 5, 6, 4), 1.5, dtype=torch.float64), (11, 8, 13))
    np.testing.assert_allclose(field.numpy(), 1.5, atol=1e-12)
