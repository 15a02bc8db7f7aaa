"""Nyúl-Udupa landmarks and the piecewise-linear map against TorchIO's functions and numpy.interp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuprep.functional.histogram_standardize import (
    average_landmarks,
    landmark_percentiles,
    snap_ties,
    standardize,
    uniform_landmarks,
)

KEEP = [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12]  # TorchIO's range_to_use: its 13 percentiles minus 25 and 75
TORCHIO_MODULE = "torchio.transforms.preprocessing.intensity.histogram_standardization"


def test_landmark_percentiles_are_torchios_without_the_quartiles():
    histogram_standardization = pytest.importorskip(TORCHIO_MODULE)
    expected = np.asarray(histogram_standardization._get_percentiles((1.0, 99.0)))[KEEP]
    np.testing.assert_allclose(landmark_percentiles(), expected)
    assert landmark_percentiles((0.05, 0.95), (0.5,)) == [5.0, 50.0, 95.0]


def test_average_landmarks_is_torchios_average_mapping():
    histogram_standardization = pytest.importorskip(TORCHIO_MODULE)
    database = np.sort(np.random.default_rng(0).uniform(0, 500, size=(6, 11)), axis=1)
    expected = histogram_standardization._get_average_mapping(database)
    np.testing.assert_allclose(average_landmarks(torch.from_numpy(database)).numpy(), expected, rtol=1e-12)


def test_average_landmarks_maps_an_image_with_tied_cutoffs_to_the_low_end():
    """Each image mapped so that its cutoffs land on the range's ends, then averaged; tied cutoffs: slope 0."""
    database = np.array([[10.0, 20.0, 50.0], [0.0, 40.0, 100.0], [7.0, 7.0, 7.0]])
    mapped = [(row - row[0]) / (row[-1] - row[0]) * 100 for row in database[:2]] + [np.zeros(3)]
    np.testing.assert_allclose(average_landmarks(torch.from_numpy(database)).numpy(), np.mean(mapped, axis=0),
                               atol=1e-12)


def test_uniform_landmarks_spread_like_their_percentiles():
    percentiles = np.array(landmark_percentiles())
    expected = (percentiles - percentiles[0]) / (percentiles[-1] - percentiles[0]) * 100
    np.testing.assert_allclose(uniform_landmarks().numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(uniform_landmarks(output_range=(-1, 1)).numpy(), expected / 50 - 1, atol=1e-12)


def test_standardize_is_numpy_interp_inside_and_extends_the_end_segments(device):
    rng = np.random.default_rng(1)
    source = np.sort(rng.uniform(0, 100, size=(2, 5)), axis=1)
    target = np.array([0.0, 10.0, 40.0, 70.0, 100.0])
    x = rng.uniform(-20, 120, size=(2, 1, 6, 7, 8))
    out = standardize(torch.from_numpy(x).to(device), torch.from_numpy(source), torch.from_numpy(target)).cpu().numpy()
    for b in range(2):
        s, v = source[b], x[b]
        expected = np.interp(v, s, target)
        below, above = v < s[0], v > s[-1]
        expected[below] = target[0] + (v[below] - s[0]) * (target[1] - target[0]) / (s[1] - s[0])
        expected[above] = target[-1] + (v[above] - s[-1]) * (target[-1] - target[-2]) / (s[-1] - s[-2])
        np.testing.assert_allclose(out[b], expected, atol=1e-9)


def test_standardize_flat_segments_and_empty_masks():
    """Tied source landmarks give a flat segment; a tied value maps by the segment after the run; NaN: unchanged."""
    x = torch.tensor([[-1.0, 0.0, 5.0, 10.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    source = torch.tensor([[0.0, 0.0, 10.0], [float("nan"), 1.0, 2.0]], dtype=torch.float64)
    out = standardize(x, source, torch.tensor([0.0, 50.0, 100.0]))
    assert out[0].tolist() == [0.0, 50.0, 75.0, 100.0]
    assert torch.equal(out[1], x[1])


def test_snap_ties_sets_each_run_to_the_lower_edge_of_its_first_bin():
    source = torch.tensor([[0.001, 0.002, 0.1, 5.1, 5.2, 9.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    low, high = torch.tensor([0.0, 0.0]), torch.tensor([10.0, 10.0])
    out = snap_ties(source, low, high, bins=64)  # bin width 0.15625: runs need gaps below 0.3125
    np.testing.assert_allclose(out[0].numpy(), [0.0, 0.0, 0.0, 5.0, 5.0, 9.0])  # 5.1 is in the bin [5.0, 5.156)
    assert torch.equal(out[1], source[1])  # no ties
    assert torch.equal(snap_ties(source[:1], torch.tensor([3.0]), torch.tensor([3.0]), 64), source[:1])
