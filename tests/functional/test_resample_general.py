"""Resampling along general maps (rotations, shears) against scipy.ndimage.affine_transform, and its grid cache."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from gpuprep.functional.resample_general import (
    GridCache,
    antialias,
    batchable,
    cubic_general,
    general_batched,
    inside_grid,
    linear_general,
    nearest_general,
)
from tests.functional.test_resample import _rotation_map

IN_SHAPE = (12, 14, 10)


def _volume(seed=0, shape=IN_SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def _source(voxel_map, out_shape) -> np.ndarray:
    """Input voxel coordinates ``[D, H, W, 3]`` read by every output voxel."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in out_shape], indexing="ij"), -1)
    return grid @ voxel_map[:3, :3].T + voxel_map[:3, 3]


def _within_half_a_voxel(voxel_map, out_shape, in_shape=IN_SHAPE, margin=-0.5) -> np.ndarray:
    source = _source(voxel_map, out_shape)
    return ((source >= margin) & (source <= np.array(in_shape) - 1 - margin)).all(-1)


@pytest.mark.parametrize(("function", "order"), [(linear_general, 1), (nearest_general, 0)])
def test_linear_and_nearest_read_the_edge_within_half_a_voxel_and_zero_beyond(function, order, device):
    """scipy with mode='nearest' where the source is within half a voxel of the input, 0 elsewhere. 1e-10 (float64)."""
    volume = _volume()
    voxel_map = _rotation_map(0.5, shift=(3.0, -2.0, 1.0))
    out = function(torch.from_numpy(volume)[None, None].to(device), voxel_map, (13, 12, 11), "zeros")
    reference = ndi.affine_transform(volume, voxel_map, output_shape=(13, 12, 11), order=order, mode="nearest")
    inside = _within_half_a_voxel(voxel_map, (13, 12, 11))
    assert 0.2 < inside.mean() < 0.95
    np.testing.assert_allclose(out[0, 0].cpu().numpy(), np.where(inside, reference, 0.0), atol=1e-10)
    border = function(torch.from_numpy(volume)[None, None].to(device), voxel_map, (13, 12, 11), "border")
    np.testing.assert_allclose(border[0, 0].cpu().numpy(), reference, atol=1e-10)


def test_nearest_keeps_label_values_and_dtype():
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 300, (1, 1, *IN_SHAPE))).to(torch.int16)
    voxel_map = _rotation_map(0.3)
    out = nearest_general(labels, voxel_map, IN_SHAPE, "border")
    reference = ndi.affine_transform(labels[0, 0].numpy(), voxel_map, order=0, mode="nearest")
    assert out.dtype == torch.int16
    np.testing.assert_array_equal(out[0, 0].numpy(), reference)


def test_cubic_is_scipys_b_spline_with_mirror_prefilter(device):
    volume = _volume(2)
    voxel_map = _rotation_map(0.25, shift=(1.0, 0.5, -0.5))
    out = cubic_general(torch.from_numpy(volume)[None, None].to(device), voxel_map, IN_SHAPE, "zeros")
    reference = ndi.affine_transform(volume, voxel_map, order=3, mode="mirror")
    inside = _within_half_a_voxel(voxel_map, IN_SHAPE, margin=1.0)  # no boundary rule there
    assert inside.sum() > 300
    np.testing.assert_allclose(out[0, 0].cpu().numpy()[inside], reference[inside], atol=1e-9)


def test_general_batched_takes_one_map_per_sample():
    volume = torch.from_numpy(np.stack([_volume(3), _volume(4)])[:, None])
    maps = np.stack([_rotation_map(0.2), _rotation_map(-0.6, shift=(0.0, 1.0, 2.0))])
    out = general_batched(volume, maps, IN_SHAPE, "linear", "zeros")
    for index in range(2):
        single = linear_general(volume[index : index + 1], maps[index], IN_SHAPE, "zeros")
        torch.testing.assert_close(out[index], single[0], rtol=0, atol=1e-12)


def test_batchable_needs_linear_or_nearest_general_maps_and_a_float32_safe_dtype():
    rotation, scaling = _rotation_map(), np.diag([2.0, 1.0, 0.5, 1.0])
    floats = torch.zeros(1, 1, 2, 2, 2)
    assert batchable(floats, [rotation], "linear") and batchable(floats.to(torch.uint8), [rotation], "nearest")
    assert not batchable(floats, [rotation], "cubic")
    assert not batchable(floats, [rotation, scaling], "linear")  # a separable map goes the exact way
    assert not batchable(floats.to(torch.int32), [rotation], "nearest")  # not exact in float32


def test_inside_grid_allows_half_a_voxel_beyond_the_edge_centres():
    in_shape = (5, 3, 9)
    step = [2.0 / (n - 1) for n in reversed(in_shape)]  # normalised size of a voxel along W, H, D
    grid = torch.zeros(1, 1, 1, 4, 3, dtype=torch.float64)
    grid[0, 0, 0, :, 0] = torch.tensor([1.0, 1.0 + 0.49 * step[0], 1.0 + 0.51 * step[0], -1.0 - 0.49 * step[0]])
    grid[0, 0, 0, 3, 2] = -1.0 - 0.6 * step[2]  # beyond along D
    assert inside_grid(grid, in_shape)[0, 0, 0, 0].tolist() == [True, True, False, False]


def test_grid_cache_reuses_a_build_for_the_same_key_one_entry_per_kind():
    calls = []

    def build(value):
        return lambda: calls.append(value) or value

    cache = GridCache()
    assert cache.get(("grid", 1), build("c")) == "c"
    assert cache.get(("grid", 1), build("d")) == "c"  # same key: reused
    assert cache.get(("grid", 2), build("f")) == "f"  # another key of the same kind replaces the entry
    assert cache.get(("mask", 1), build("g")) == "g"
    assert cache.get(("grid", 2), build("h")) == "f"
    assert cache.get(("grid", 1), build("j")) == "j"  # the replaced entry is gone
    assert GridCache().get(("grid", 1), build("i")) == "i"  # a new cache shares nothing
    assert calls == ["c", "f", "g", "j", "i"]


def test_antialias_smooths_each_input_axis_by_its_step():
    """scipy's gaussian_filter (mode='nearest', truncate 4) with sigma = (step - 1) / 2 per input axis."""
    volume = _volume(5)
    voxel_map = np.diag([3.0, 1.0, 2.0, 1.0])
    out = antialias(torch.from_numpy(volume)[None, None], voxel_map)
    reference = ndi.gaussian_filter(volume, [1.0, 0.0, 0.5], mode="nearest", truncate=4.0)
    np.testing.assert_allclose(out[0, 0].numpy(), reference, atol=1e-12)
    labels = torch.zeros(1, 1, *IN_SHAPE, dtype=torch.uint8)
    assert antialias(labels, voxel_map) is labels
    identity = torch.from_numpy(volume)[None, None]
    assert antialias(identity, np.eye(4)) is identity
