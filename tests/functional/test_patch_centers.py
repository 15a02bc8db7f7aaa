"""Patch centres drawn from label and weight maps, checked against NumPy's C-order indexing of the same draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuprep.errors import TransformError
from gpuprep.functional.patch_centers import label_centers, patch_starts, unravel, weighted_centers


def test_unravel_is_numpys_unravel_index():
    shape = (4, 5, 6)
    flat = torch.tensor([[0, 7, 119], [30, 59, 64]])
    expected = np.stack(np.unravel_index(flat.numpy(), shape), -1)
    np.testing.assert_array_equal(unravel(flat, shape).numpy(), expected)


def test_patch_starts_centre_the_patch_clamp_it_inside_and_centre_a_padded_axis():
    centers = torch.tensor([[0, 5, 9], [3, 2, 4], [9, 0, 9]])
    size, shape = (4, 3, 12), (10, 6, 10)  # the last axis is shorter than the patch: padded
    starts = patch_starts(centers, size, shape)
    assert starts.tolist() == [[0, 3, -1], [1, 1, -1], [6, 0, -1]]
    inside = (starts[:, :2] >= 0) & (starts[:, :2] + torch.tensor(size[:2]) <= torch.tensor(shape[:2]))
    holds = (starts[:, :2] <= centers[:, :2]) & (centers[:, :2] < starts[:, :2] + torch.tensor(size[:2]))
    assert inside.all() and holds.all()


def test_label_centers_pick_the_class_by_ratio_among_present_classes_and_the_voxel_by_rank():
    rng = np.random.default_rng(0)
    label = rng.choice([0, 2], size=(1, 1, 6, 7, 8), p=[0.7, 0.3]).astype(np.uint8)  # class 1 absent
    ratios = [1.0, 5.0, 2.0]  # present: 0 (1/3) and 2 (2/3)
    draws = torch.tensor([[[0.2, 0.0], [0.5, 0.999], [0.9, 0.4], [0.1, 0.61]]], dtype=torch.float64)
    rows = label_centers(torch.from_numpy(label), draws, ratios, False, (2, 2, 2), "label")
    assert rows[0, :, 6].tolist() == [0, 2, 2, 0] and rows[0, :, 7].tolist() == [1, 1, 1, 1]
    for (_, rank_draw), row in zip(draws[0].tolist(), rows[0]):
        voxels = np.flatnonzero(label[0, 0].ravel() == int(row[6]))
        expected = np.unravel_index(voxels[int(np.floor(rank_draw * len(voxels)))], label.shape[2:])
        assert row[3:6].tolist() == list(expected)


def test_label_centers_pos_neg_and_one_channel_per_class_agree_with_class_indices():
    rng = np.random.default_rng(1)
    classes = rng.choice([0, 1], size=(2, 1, 5, 6, 7), p=[0.8, 0.2])
    draws = torch.from_numpy(rng.random((2, 5, 2)))
    by_index = label_centers(torch.from_numpy(classes), draws, [1.0, 1.0], False, (3, 3, 3), "label")
    pos_neg = label_centers(torch.from_numpy(classes), draws, [1.0, 1.0], True, (3, 3, 3), "label")
    one_hot = torch.from_numpy(np.concatenate([classes == 0, classes == 1], axis=1))
    per_channel = label_centers(one_hot, draws, [1.0, 1.0], False, (3, 3, 3), "label")
    assert torch.equal(by_index, pos_neg) and torch.equal(by_index, per_channel)
    with pytest.raises(TransformError, match="3 channels"):
        label_centers(torch.zeros(1, 3, 4, 4, 4), draws[:1], [1.0, 1.0], False, (2, 2, 2), "label")


def test_label_centers_without_any_class_present_are_not_found():
    rows = label_centers(torch.zeros(1, 1, 4, 4, 4), torch.full((1, 2, 2), 0.5), [0.0, 1.0], False, (2, 2, 2), "x")
    assert rows[0, :, 7].tolist() == [0, 0]


def test_weighted_centers_follow_the_cumulative_weights_inside_the_fitting_region():
    weight = torch.zeros(1, 1, 8, 8, 8, dtype=torch.float64)
    weight[0, 0, 3, 4, 5] = 1.0
    weight[0, 0, 5, 2, 2] = 3.0
    weight[0, 0, 0, 0, 0] = 100.0  # no patch of 4 can be centred there: never drawn
    rows = weighted_centers(weight, torch.tensor([[0.0, 0.2, 0.25, 0.99]], dtype=torch.float64), (4, 4, 4), "w")
    assert rows[0, :, 3:6].tolist() == [[3, 4, 5], [3, 4, 5], [5, 2, 2], [5, 2, 2]]
    assert rows[0, :, 6:].tolist() == [[0, 1]] * 4


def test_weighted_centers_of_a_zero_map_are_uniform_over_the_fitting_region():
    draws = torch.tensor([[0.0, 0.5, 0.999]], dtype=torch.float64)
    rows = weighted_centers(torch.zeros(1, 1, 6, 7, 8), draws, (2, 3, 4), "w")
    region = (5, 5, 5)  # centres c with c - size // 2 >= 0 and c - size // 2 + size <= n
    expected = [np.add(np.unravel_index(int(d * 125), region), (1, 1, 2)).tolist() for d in draws[0].tolist()]
    assert rows[0, :, 3:6].tolist() == expected
    with pytest.raises(TransformError, match="one channel"):
        weighted_centers(torch.zeros(1, 2, 4, 4, 4), draws, (2, 2, 2), "w")
