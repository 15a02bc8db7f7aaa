"""1D resampling operators against scipy.ndimage (map_coordinates, spline_filter1d) and NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from scipy.interpolate import BSpline

from gpuprep.functional.axis_operators import (
    apply_axis_operator,
    apply_separable,
    apply_to_rows,
    axis_operator,
    chain_operators,
    cubic_bspline_prefilter_matrix,
    cubic_bspline_weights,
    mirror_index,
    nearest_index,
)

ORDERS = {"nearest": 0, "linear": 1, "cubic": 3}


def _signal(n=11, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n)


def _dense(operator, n_in: int) -> np.ndarray:
    """The operator as a dense ``[n_out, n_in]`` matrix (repeated taps summed)."""
    matrix = np.zeros((operator.size, n_in))
    np.add.at(matrix, (np.arange(operator.size)[:, None].repeat(operator.index.shape[1], 1), operator.index),
              operator.weights)
    return matrix


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_axis_operator_matches_map_coordinates_inside_the_axis(mode):
    """Linear: mode='nearest' (the edge within half a voxel); cubic: B-spline with mirror prefilter. 1e-12."""
    signal = _signal()
    positions = np.linspace(-0.45, 10.45, 37)
    operator = axis_operator(positions, 11, mode)
    scipy_mode = "nearest" if mode == "linear" else "mirror"
    reference = ndi.map_coordinates(signal, positions[None], order=ORDERS[mode], mode=scipy_mode)
    inside = (positions >= 0) & (positions <= 10) if mode == "cubic" else slice(None)
    np.testing.assert_allclose((_dense(operator, 11) @ signal)[inside], reference[inside], atol=1e-12)


def test_axis_operator_nearest_rounds_ties_up_and_pads_with_zeros_beyond_half_a_voxel():
    signal = np.arange(1.0, 6.0)  # 1..5
    operator = axis_operator(np.array([-0.6, -0.5, 0.5, 1.5, 2.49, 4.5, 4.6]), 5, "nearest")
    assert operator.is_selection
    np.testing.assert_array_equal(_dense(operator, 5) @ signal, [0, 1, 2, 3, 3, 5, 0])
    border = axis_operator(np.array([-3.0, 7.0]), 5, "linear", padding_mode="border")
    np.testing.assert_array_equal(_dense(border, 5) @ signal, [1, 5])


def test_antialiasing_is_a_gaussian_of_the_input_first():
    """Folded-in smoothing equals scipy's gaussian_filter1d (mode='nearest', truncate 4) then linear sampling."""
    signal = _signal(30, seed=1)
    positions = np.arange(0, 30, 3.0) + 1.0
    operator = axis_operator(positions, 30, "linear", antialias_sigma=1.0)
    smoothed = ndi.gaussian_filter1d(signal, 1.0, mode="nearest", truncate=4.0)
    np.testing.assert_allclose(_dense(operator, 30) @ signal, np.interp(positions, np.arange(30), smoothed),
                               atol=1e-12)


def test_apply_axis_operator_resamples_one_dimension_of_a_volume(device):
    volume = np.random.default_rng(2).normal(size=(2, 1, 5, 6, 7))
    positions = np.array([0.0, 1.25, 2.5, 4.75, 6.0])
    out = apply_axis_operator(torch.from_numpy(volume).to(device), 4, axis_operator(positions, 7, "linear"))
    coords = np.meshgrid(np.arange(5), np.arange(6), positions, indexing="ij")
    for b in range(2):
        reference = ndi.map_coordinates(volume[b, 0], coords, order=1, mode="nearest")
        np.testing.assert_allclose(out[b, 0].cpu().numpy(), reference, atol=1e-12)


def test_selection_operators_keep_integer_labels_bit_for_bit():
    labels = torch.randint(0, 250, (1, 1, 4, 5, 6), dtype=torch.uint8)
    flip = axis_operator(np.arange(5.0)[::-1].copy(), 5, "nearest")
    out = apply_axis_operator(labels, 3, flip)
    assert out.dtype == torch.uint8 and torch.equal(out, labels.flip(3))
    with pytest.raises(TypeError, match="floating-point"):
        apply_axis_operator(labels, 3, axis_operator(np.array([0.5, 1.5]), 5, "linear"))


def test_apply_separable_equals_one_axis_at_a_time_and_none_skips_an_axis():
    volume = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 3, 6, 7, 8)))
    operators = [axis_operator(np.linspace(0, 5, 4), 6), None, axis_operator(np.linspace(0.5, 6.5, 10), 8, "cubic")]
    out = apply_separable(volume, operators)
    expected = apply_axis_operator(apply_axis_operator(volume, 2, operators[0]), 4, operators[2])
    assert out.shape == (2, 3, 4, 7, 10)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_apply_to_rows_is_the_dense_matrix_product_in_every_dtype():
    rows = torch.from_numpy(np.random.default_rng(4).normal(size=(9, 5)))
    operator = axis_operator(np.linspace(-0.3, 8.3, 13), 9, "cubic")
    expected = _dense(operator, 9) @ rows.numpy()
    np.testing.assert_allclose(apply_to_rows(rows, operator).numpy(), expected, atol=1e-12)
    half = apply_to_rows(rows.to(torch.bfloat16), operator)
    assert half.dtype == torch.bfloat16
    np.testing.assert_allclose(half.float().numpy(), expected, atol=0.1)


def test_chain_operators_equals_applying_both():
    first = axis_operator(np.linspace(0, 9, 6), 10, "linear")
    second = axis_operator(np.array([-0.25, 0.4, 1.9, 3.3, 5.2]), 6, "cubic")
    signal = _signal(10, seed=5)
    chained = chain_operators(first, second, 10)
    np.testing.assert_allclose(_dense(chained, 10) @ signal, _dense(second, 6) @ (_dense(first, 10) @ signal),
                               atol=1e-12)


def test_nearest_index_rounds_half_up_despite_float_noise():
    positions = np.array([-0.5, 0.5, 1.5 - 1e-12, 2.4999, 2.5, 3.5 + 1e-13, 7.2])
    np.testing.assert_array_equal(nearest_index(positions), [0, 1, 2, 2, 3, 4, 7])


def test_mirror_index_is_numpys_reflect_padding():
    n = 5
    index = np.arange(-12, 17)
    expected = np.pad(np.arange(n), 12, mode="reflect")[: len(index)]
    np.testing.assert_array_equal(mirror_index(index, n), expected)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_cubic_bspline_prefilter_matrix_is_scipys_spline_filter(n):
    signal = _signal(n, seed=6)
    reference = ndi.spline_filter1d(signal, order=3, mode="mirror")
    np.testing.assert_allclose(cubic_bspline_prefilter_matrix(n) @ signal, reference, atol=1e-12)


def test_cubic_bspline_weights_are_the_cubic_b_spline_at_the_four_taps():
    beta3 = BSpline.basis_element([-2, -1, 0, 1, 2], extrapolate=False)
    frac = np.linspace(0, 0.999, 17)
    weights = np.stack(cubic_bspline_weights(frac))
    expected = np.stack([beta3(frac + 1), beta3(frac), beta3(frac - 1), beta3(frac - 2)])
    np.testing.assert_allclose(weights, np.nan_to_num(expected), atol=1e-12)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-12)
