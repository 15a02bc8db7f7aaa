"""B-spline lattices on a grid: the basis against SciPy, the fit and the evaluation against explicit sums."""

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from gpuprep.functional.bspline_fit import (
    bspline_basis_at,
    evaluate_lattice,
    evaluate_lattices,
    fit_lattice,
    grid_bases,
    lattice_weights,
)


@pytest.mark.parametrize("n_control", [4, 5, 11])
def test_basis_equals_scipys_uniform_cubic_bspline(n_control):
    cells = n_control - 3
    positions = np.linspace(0.0, cells, 37)
    knots = np.arange(-3.0, n_control + 1.0)  # ITK's layout: cell j is reached by control points j .. j + 3
    expected = BSpline.design_matrix(positions, knots, 3).toarray()
    np.testing.assert_allclose(bspline_basis_at(positions, n_control), expected, atol=1e-12)


def test_basis_needs_a_cubic_lattice():
    with pytest.raises(ValueError, match="n_control must be at least 4"):
        bspline_basis_at(np.zeros(3), 3)


def explicit_fit(values: np.ndarray, weights: np.ndarray, bases: list[np.ndarray]) -> np.ndarray:
    """ITK's BSplineScatteredDataPointSetToImageFilter, one level: a loop over the data points."""
    delta = np.zeros([b.shape[1] for b in bases])
    omega = np.zeros_like(delta)
    for x, y, z in np.ndindex(values.shape):
        t = np.einsum("i,j,k->ijk", bases[0][x], bases[1][y], bases[2][z])
        phi = t * values[x, y, z] / (t**2).sum()
        delta += weights[x, y, z] * t**2 * phi
        omega += weights[x, y, z] * t**2
    return np.where(omega > 0, delta / np.where(omega > 0, omega, 1.0), 0.0)


def test_fit_equals_the_explicit_sums_over_points():
    rng = np.random.default_rng(0)
    shape, counts = (6, 5, 7), (4, 5, 6)
    values = rng.normal(size=shape)
    weights = (rng.random(shape) < 0.6) * rng.random(shape)
    bases = grid_bases(shape, counts, dtype=torch.float64)
    got = fit_lattice(torch.from_numpy(values)[None], torch.from_numpy(weights)[None], bases)
    expected = explicit_fit(values, weights, [b.numpy() for b in bases])
    np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-12)
    omega = lattice_weights(torch.from_numpy(weights)[None], bases)
    np.testing.assert_allclose(fit_lattice(torch.from_numpy(values)[None], torch.from_numpy(weights)[None], bases,
                                           omega)[0].numpy(), expected, atol=1e-12)


def test_control_points_no_voxel_reaches_are_zero():
    bases = grid_bases((8, 8, 8), (5, 5, 5), dtype=torch.float64)
    weights = torch.zeros(1, 8, 8, 8, dtype=torch.float64)
    weights[0, :2, :2, :2] = 1.0  # only a corner has data
    lattice = fit_lattice(torch.ones_like(weights), weights, bases)
    assert lattice[0, 4, 4, 4] == 0 and lattice[0, 0, 0, 0] != 0


def test_evaluation_equals_the_explicit_tensor_product_and_levels_add_up():
    rng = np.random.default_rng(1)
    shape = (9, 6, 7)
    coarse, fine = rng.normal(size=(1, 4, 5, 4)), rng.normal(size=(1, 5, 7, 5))
    coarse_bases = grid_bases(shape, coarse.shape[1:], dtype=torch.float64)
    fine_bases = grid_bases(shape, fine.shape[1:], dtype=torch.float64)
    got = evaluate_lattice(torch.from_numpy(coarse), coarse_bases)[0].numpy()
    expected = np.einsum("ijk,xi,yj,zk->xyz", coarse[0], *[b.numpy() for b in coarse_bases])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    both = evaluate_lattices([torch.from_numpy(coarse), torch.from_numpy(fine)], [coarse_bases, fine_bases])
    separate = got + evaluate_lattice(torch.from_numpy(fine), fine_bases)[0].numpy()
    np.testing.assert_allclose(both[0].numpy(), separate, atol=1e-12)


def test_a_batch_fits_each_sample_on_its_own():
    rng = np.random.default_rng(2)
    values = torch.from_numpy(rng.normal(size=(3, 6, 6, 6)))
    weights = torch.from_numpy((rng.random((3, 6, 6, 6)) < 0.5).astype(np.float64))
    bases = grid_bases((6, 6, 6), (4, 4, 4), dtype=torch.float64)
    together = fit_lattice(values, weights, bases)
    for index in range(3):
        alone = fit_lattice(values[index : index + 1], weights[index : index + 1], bases)
        torch.testing.assert_close(together[index : index + 1], alone, rtol=0, atol=1e-12)
