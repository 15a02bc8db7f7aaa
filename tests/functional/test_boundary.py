"""Boundary modes against numpy.pad / scipy.ndimage: pad_volume and boundary_indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuprep.functional.boundary import BOUNDARY_MODES, boundary_indices, pad_volume

NUMPY_PAD = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap", "constant": "constant"}


@pytest.mark.parametrize("mode", BOUNDARY_MODES)
@pytest.mark.parametrize("width", [1, 3, 7, 12])
def test_pad_volume_matches_numpy_pad(mode, width, rng):
    """Exact, including extensions wider than the axis (scipy/numpy repeat the pattern)."""
    x = rng.normal(size=(1, 2, 4, 5, 6))
    pads = [(width, width // 2), (0, width), (width, 1)]
    out = pad_volume(torch.from_numpy(x), pads, mode, cval=2.5).numpy()
    extra = {"constant_values": 2.5} if mode == "constant" else {}
    reference = np.pad(x, [(0, 0), (0, 0), *pads], mode=NUMPY_PAD[mode], **extra)
    np.testing.assert_array_equal(out, reference)


def test_boundary_indices_of_a_single_voxel_axis():
    for mode in ("reflect", "mirror", "nearest", "wrap"):
        assert boundary_indices(1, 3, 2, mode).tolist() == [0] * 6
