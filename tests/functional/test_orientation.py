"""Exact reorientation against nibabel.orientations: axis codes, transforms, shapes and the voxels themselves."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from nibabel import orientations as nio

from gpuprep.functional.orientation import apply_orientation, axcodes_of, orientation_transform, reoriented_shape
from tests.conftest import oblique_affine

# All 48 orientation transforms: every permutation of the three axes with every combination of flips.
ORIENTATIONS = [np.array([[axis, flip] for axis, flip in zip(order, flips)])
                for order in itertools.permutations(range(3)) for flips in itertools.product((1, -1), repeat=3)]


def _world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    """World positions (mm) of voxel indices ``[N, 3]``."""
    return index @ affine[:3, :3].T + affine[:3, 3]


@pytest.mark.parametrize(("columns", "expected"), [
    (np.diag([1.0, 1.0, 1.0]), "RAS"),
    (np.diag([-1.0, -1.0, 1.0]), "LPS"),
    (np.array([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0], [0.0, -3.0, 0.0]]), "AIR"),  # axis 0 along +y, 1 along -z, 2 +x
])
def test_axcodes_name_the_world_direction_of_each_voxel_axis(columns, expected):
    affine = np.eye(4)
    affine[:3, :3] = columns
    assert axcodes_of(affine) == expected
    assert axcodes_of(torch.from_numpy(affine)) == expected


@pytest.mark.parametrize("ornt", ORIENTATIONS, ids=lambda o: "".join(f"{a}{'+' if f > 0 else '-'}" for a, f in o))
def test_apply_orientation_and_shape_match_nibabel(ornt):
    volume = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    out = apply_orientation(torch.from_numpy(volume)[None], ornt)[0].numpy()
    for channel in range(2):
        np.testing.assert_array_equal(out[channel], nio.apply_orientation(volume[channel], ornt))
    assert reoriented_shape((3, 4, 5), ornt) == out.shape[1:]


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PIR", "SLA"])
def test_orientation_transform_reaches_the_codes_and_keeps_every_voxel_at_its_world_position(axcodes):
    """An oblique, permuted grid to ``axcodes``: the new grid has those codes, each value the same world position."""
    affine = oblique_affine() @ np.array([[0, 0, 1, 0], [-1, 0, 0, 3], [0, 1, 0, 0], [0, 0, 0, 1.0]])
    shape = (3, 4, 5)
    ornt = orientation_transform(affine, axcodes)
    new_affine = affine @ nio.inv_ornt_aff(ornt, shape)
    assert axcodes_of(new_affine) == axcodes
    volume = torch.arange(np.prod(shape)).reshape(1, 1, *shape)
    out = apply_orientation(volume, ornt)[0, 0].numpy()
    out_index = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1).reshape(-1, 3)
    in_index = np.stack(np.unravel_index(out.reshape(-1), shape), -1)
    np.testing.assert_allclose(_world(new_affine, out_index), _world(affine, in_index), atol=1e-9)
