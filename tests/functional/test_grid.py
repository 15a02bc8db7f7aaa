"""The coordinate convention: voxel maps, their axis structure and grid_sample's normalised coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from nibabel.affines import apply_affine

from gpuprep.functional.grid import (
    axis_permutation,
    corner_distance,
    flip_map,
    is_lattice_map,
    normalized_theta,
    rot90_map,
    scaling_map,
    spacing_of,
    translation_map,
    world_preserving_map,
)
from tests.conftest import oblique_affine
from tests.functional.test_resample import _rotation_map


def test_normalized_theta_agrees_with_voxel_map():
    """affine_grid(normalized_theta) points at M @ voxel, converted back to voxel units."""
    voxel_map = _rotation_map()
    in_shape, out_shape = (5, 6, 7), (4, 8, 3)
    theta = torch.from_numpy(normalized_theta(voxel_map, in_shape, out_shape))[None]
    grid = torch.nn.functional.affine_grid(theta, [1, 1, *out_shape], align_corners=True)[0].numpy()
    voxel = (grid[..., ::-1] + 1) / 2 * (np.array(in_shape) - 1)  # back to (i, j, k) input voxels
    out_grid = np.stack(np.meshgrid(*[np.arange(n) for n in out_shape], indexing="ij"), -1)
    expected = out_grid @ voxel_map[:3, :3].T + voxel_map[:3, 3]
    np.testing.assert_allclose(voxel, expected, atol=1e-9)


def test_spacing_and_corner_distance_of_oblique_affines():
    affine = oblique_affine(spacing=(1.2, 0.9, 2.5))
    np.testing.assert_allclose(spacing_of(affine), [1.2, 0.9, 2.5], atol=1e-12)
    moved = affine.copy()
    moved[:3, 3] += [0.3, -0.4, 0.0]
    np.testing.assert_allclose(corner_distance(affine, np.stack([affine, moved]), (4, 5, 6)), [0.0, 0.5], atol=1e-12)


def test_world_preserving_map_reads_the_input_at_the_outputs_world_points():
    affine_in = oblique_affine()
    affine_out = oblique_affine(spacing=(2.0, 2.0, 2.0), angles=(0.1, 0.0, -0.3), origin=(-80.0, 10.0, -60.0))
    voxel_map = world_preserving_map(affine_in, affine_out)
    out_voxels = np.random.default_rng(0).uniform(0, 20, size=(10, 3))
    np.testing.assert_allclose(apply_affine(affine_in, apply_affine(voxel_map, out_voxels)),
                               apply_affine(affine_out, out_voxels), atol=1e-9)


@pytest.mark.parametrize(("in_shape", "out_shape"), [((12, 14, 10), (18, 21, 15)), ((9, 8, 7), (3, 4, 7))])
def test_scaling_map_is_scipy_zoom_with_grid_mode(in_shape, out_shape):
    """Voxel edges coincide at both ends (zoom(grid_mode=True)): linear rescaling equals scipy. 1e-12."""
    volume = np.random.default_rng(1).normal(size=in_shape)
    reference = ndi.zoom(volume, np.array(out_shape) / in_shape, order=1, grid_mode=True, mode="nearest")
    out = ndi.affine_transform(volume, scaling_map(in_shape, out_shape), output_shape=out_shape, order=1,
                               mode="nearest")
    np.testing.assert_allclose(out, reference, atol=1e-12)


def test_translation_flip_and_rot90_maps_are_numpy_slicing_flips_and_rot90():
    volume = np.arange(3 * 4 * 5.0).reshape(3, 4, 5)

    def pull(voxel_map, shape):
        return ndi.affine_transform(volume, voxel_map, output_shape=shape, order=0, mode="constant", cval=-1)

    np.testing.assert_array_equal(pull(translation_map([1, 0, 2]), (2, 4, 3)), volume[1:, :, 2:])
    np.testing.assert_array_equal(pull(flip_map(volume.shape, [0, 2]), volume.shape), volume[::-1, :, ::-1])
    for axes in [(0, 1), (1, 2), (0, 2), (2, 0)]:
        voxel_map, shape = rot90_map(volume.shape, axes)
        np.testing.assert_array_equal(pull(voxel_map, shape), np.rot90(volume, 1, axes))


def test_axis_permutation_and_lattice_maps():
    swap = np.array([[0, 2.0, 0, 0], [1, 0, 0, 0], [0, 0, -1, 5], [0, 0, 0, 1]])
    assert axis_permutation(swap) == [1, 0, 2] and not is_lattice_map(swap)  # a scaling by 2: not a lattice
    assert axis_permutation(_rotation_map()) is None and not is_lattice_map(_rotation_map())
    assert is_lattice_map(flip_map((4, 5, 6), [1]) @ translation_map([2, -1, 0]))
    assert not is_lattice_map(translation_map([0.5, 0, 0]))
