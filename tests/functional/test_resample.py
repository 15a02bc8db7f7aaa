"""The resampler against scipy.ndimage on the same voxel maps."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from gpuprep.functional.grid import axis_permutation, is_lattice_map, scaling_map
from gpuprep.functional.resample import resample, resample_with_labels

ORDERS = {"nearest": 0, "linear": 1, "cubic": 3}


def _volume(shape=(12, 14, 10), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def _rotation_map(angle=0.3, shift=(2.0, -1.0, 0.5)) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    voxel_map = np.eye(4)
    voxel_map[:3, :3] = [[c, -s, 0.1], [s, c, 0.0], [0.0, 0.05, 1.0]]
    voxel_map[:3, 3] = shift
    return voxel_map


def _well_inside(voxel_map, out_shape, in_shape, margin=1.0) -> np.ndarray:
    """Output voxels whose source point is at least ``margin`` voxels inside the input."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in out_shape], indexing="ij"), -1)
    source = grid @ voxel_map[:3, :3].T + voxel_map[:3, 3]
    return ((source >= margin) & (source <= np.array(in_shape) - 1 - margin)).all(-1)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_general_map_matches_scipy_affine_transform(mode, device):
    """Rotation + shear; scipy with mode='mirror'; compared where no boundary rule applies. Tol 1e-5."""
    volume = _volume()
    voxel_map = _rotation_map()
    assert axis_permutation(voxel_map) is None
    out = resample(torch.from_numpy(volume)[None, None].to(device), voxel_map, volume.shape, mode)
    reference = ndi.affine_transform(volume, voxel_map, order=ORDERS[mode], mode="mirror")
    inside = _well_inside(voxel_map, volume.shape, volume.shape)
    assert inside.sum() > 200
    np.testing.assert_allclose(out[0, 0].cpu().numpy()[inside], reference[inside], atol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("out_shape", [(18, 21, 15), (7, 9, 6)])
def test_rescaling_matches_scipy_zoom(mode, out_shape, device):
    """Separable path vs scipy.ndimage.zoom(grid_mode=True); all voxels, tolerance 1e-9 (float64)."""
    volume = _volume()
    zoom = np.array(out_shape) / np.array(volume.shape)
    voxel_map = scaling_map(volume.shape, out_shape)
    out = resample(torch.from_numpy(volume)[None, None].to(device), voxel_map, out_shape, mode)
    scipy_mode = {"nearest": "nearest", "linear": "nearest", "cubic": "mirror"}[mode]
    reference = ndi.zoom(volume, zoom, order=ORDERS[mode], grid_mode=True, mode=scipy_mode)
    compared = np.ones(out_shape, dtype=bool)
    if mode == "nearest":  # exact ties (x.5) round by float noise in scipy: leave them out
        for axis, (n_in, n_out) in enumerate(zip(volume.shape, out_shape)):
            position = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
            tie = np.abs(position - np.floor(position) - 0.5) < 1e-6
            compared &= ~tie.reshape([-1 if a == axis else 1 for a in range(3)])
        assert compared.mean() > 0.2
    np.testing.assert_allclose(out[0, 0].cpu().numpy()[compared], reference[compared], atol=1e-9)


def test_antialiasing_matches_gaussian_then_zoom():
    """Anti-aliased downsampling equals scipy gaussian_filter (nearest) then linear zoom. Tol 1e-9."""
    volume = _volume((24, 20, 16))
    out_shape = (8, 10, 16)
    out = resample(torch.from_numpy(volume)[None, None], scaling_map(volume.shape, out_shape), out_shape,
                   "linear", anti_aliasing=True)
    sigma = [max(0.0, (n_in / n_out - 1) / 2) for n_in, n_out in zip(volume.shape, out_shape)]
    smoothed = ndi.gaussian_filter(volume, sigma, mode="nearest", truncate=4.0)
    reference = ndi.zoom(smoothed, np.array(out_shape) / volume.shape, order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(out[0, 0].numpy(), reference, atol=1e-9)


def test_lattice_maps_are_exact_for_integer_labels(device):
    labels = torch.randint(0, 200, (2, 1, 6, 7, 8), dtype=torch.uint8, device=device)
    voxel_map = np.array([[0, -1, 0, 6], [1, 0, 0, -2], [0, 0, 1, 3], [0, 0, 0, 1.0]])  # permute, flip, shift
    assert is_lattice_map(voxel_map)
    out_shape = (9, 5, 8)
    out = resample(labels, voxel_map, out_shape, "nearest")
    assert out.dtype == torch.uint8
    reference = ndi.affine_transform(labels[0, 0].cpu().numpy(), voxel_map, output_shape=out_shape, order=0,
                                     mode="constant", cval=0)
    np.testing.assert_array_equal(out[0, 0].cpu().numpy(), reference)


def test_integer_volume_needs_nearest():
    with pytest.raises(TypeError, match="nearest"):
        resample(torch.zeros(1, 1, 2, 2, 2, dtype=torch.int16), np.eye(4), (2, 2, 2), "linear")


def test_batch_with_different_maps_equals_one_by_one():
    volume = torch.from_numpy(_volume((2, 10, 10, 10), seed=3).reshape(2, 1, 10, 10, 10))
    maps = np.stack([_rotation_map(0.2), scaling_map((10, 10, 10), (10, 10, 10)) @ _rotation_map(-0.4)])
    batched = resample(volume, maps, (10, 10, 10), "linear")
    for index in range(2):
        single = resample(volume[index : index + 1], maps[index], (10, 10, 10), "linear")
        torch.testing.assert_close(batched[index], single[0], rtol=0, atol=0)


@pytest.mark.parametrize("anti_aliasing", [False, True])
@pytest.mark.parametrize("reversed_input", [False, True])
def test_one_pass_interpolation_equals_the_banded_operators(anti_aliasing, reversed_input):
    """The fast path (trilinear kernel + exact crop/flip) against the general separable path. Tol 1e-10."""
    from gpuprep.functional.axis_operators import apply_separable, axis_operator

    volume = torch.from_numpy(_volume((20, 18, 16), seed=4))[None, None]
    step = np.array([1.5, 1.25, 0.8])
    voxel_map = np.diag([*step, 1.0])
    voxel_map[:3, 3] = 0.5 * step - 0.5 + step * np.array([2, -3, 1])  # shifted by whole output voxels
    if reversed_input:  # the input reversed along D first, as after a reorientation
        reverse = np.diag([-1.0, 1.0, 1.0, 1.0])
        reverse[0, 3] = volume.shape[2] - 1
        voxel_map = reverse @ voxel_map
    voxel_map = voxel_map @ np.diag([1.0, -1.0, 1.0, 1.0])  # and read backwards along H
    voxel_map[1, 3] += step[1] * 11
    out_shape = (10, 12, 22)
    fast = resample(volume, voxel_map, out_shape, "linear", anti_aliasing=anti_aliasing)
    operators = []
    for axis in range(3):
        positions = voxel_map[axis, axis] * np.arange(out_shape[axis]) + voxel_map[axis, 3]
        sigma = max(0.0, (abs(voxel_map[axis, axis]) - 1) / 2) if anti_aliasing else 0.0
        operators.append(axis_operator(positions, volume.shape[2 + axis], "linear", sigma))
    reference = apply_separable(volume, operators)
    np.testing.assert_allclose(fast.numpy(), reference.numpy(), atol=1e-10)


@pytest.mark.parametrize("step", [1.0625, 0.95])
def test_linear_rescale_of_an_axis_that_keeps_its_length_interpolates_that_axis(step, device):
    """Spacing 1.6 -> 1.7 mm on 8 voxels keeps 8 voxels; the axis must still be rescaled. scipy reference, 1e-9."""
    volume = _volume((7, 8, 6), seed=5)
    voxel_map = np.diag([1.0, step, 1.0, 1.0])
    voxel_map[1, 3] = 0.5 * step - 0.5  # the grid a Resample to a new spacing chooses (centres of the extent)
    out = resample(torch.from_numpy(volume)[None, None].to(device), voxel_map, volume.shape, "linear")
    reference = ndi.affine_transform(volume, voxel_map, order=1, mode="nearest")
    inside = _well_inside(voxel_map, volume.shape, volume.shape, margin=0.0)
    np.testing.assert_allclose(out[0, 0].cpu().numpy()[inside], reference[inside], atol=1e-9)


def test_an_image_with_its_labels_equals_resample_on_each_or_declines():
    pytest.importorskip("numba")
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((2, 1, 7, 8, 9), generator=generator)
    labels = (image * 3).to(torch.uint8)
    maps = np.stack([np.eye(4), np.eye(4)])
    maps[0, :3, :3] = [[0.95, 0.2, 0.0], [-0.2, 0.95, 0.0], [0.0, 0.0, 1.1]]
    maps[1, :3, :3] = [[0.9, -0.3, 0.0], [0.3, 0.9, 0.1], [0.0, -0.1, 1.0]]
    for padding_mode in ("zeros", "border"):
        pair = resample_with_labels(image, labels, maps, (6, 8, 10), padding_mode)
        assert pair is not None
        assert torch.equal(pair[0], resample(image, maps, (6, 8, 10), "linear", padding_mode=padding_mode))
        assert torch.equal(pair[1], resample(labels, maps, (6, 8, 10), "nearest", padding_mode=padding_mode))
    # Where resample would take another path (one map, an axis-aligned one, float64, float labels, other grids).
    assert resample_with_labels(image, labels, maps[:1].repeat(2, 0), (7, 8, 9)) is None
    assert resample_with_labels(image, labels, np.stack([np.eye(4), maps[1]]), (7, 8, 9)) is None
    assert resample_with_labels(image.double(), labels, maps, (7, 8, 9)) is None
    assert resample_with_labels(image, labels.float(), maps, (7, 8, 9)) is None
    assert resample_with_labels(image, labels[:, :, 1:], maps, (7, 8, 9)) is None
