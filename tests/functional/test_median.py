"""The exact median filter against scipy.ndimage.median_filter, and its window limit."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from gpuprep.functional.boundary import BOUNDARY_MODES
from gpuprep.functional.median import median_filter
from tests.functional.test_filters import _per_volume, _volume


@pytest.mark.parametrize("mode", BOUNDARY_MODES)
@pytest.mark.parametrize("radius", [1, 2, (0, 1, 2), (2, 1, 0)])
def test_median_filter_is_bit_identical_to_scipy(mode, radius, rng, device):
    """Exact equality; a tiny memory budget forces one-plane slabs through the whole volume."""
    x = _volume(rng)
    size = tuple(2 * np.broadcast_to(radius, 3) + 1)
    out = median_filter(torch.from_numpy(x).to(device), radius, mode=mode, chunk_bytes=1)
    reference = _per_volume(lambda v: ndi.median_filter(v, size=size, mode=mode), x)
    np.testing.assert_array_equal(out.cpu().numpy(), reference)


@pytest.mark.parametrize("chunk_bytes", [1, 200_000, 2**30])
def test_median_filter_with_ties_and_integers(chunk_bytes, rng):
    """Many equal values (an int16 volume with 4 levels): still exactly scipy's median."""
    x = rng.integers(0, 4, size=(1, 1, 12, 13, 11)).astype(np.int16)
    out = median_filter(torch.from_numpy(x), 1, chunk_bytes=chunk_bytes)
    assert out.dtype == torch.int16
    np.testing.assert_array_equal(out.numpy(), _per_volume(lambda v: ndi.median_filter(v, size=3), x))


def test_median_filter_removes_an_outlier_and_keeps_an_edge():
    x = torch.zeros(1, 1, 9, 9, 9)
    x[..., 5:] = 1.0
    x[0, 0, 2, 2, 2] = 50.0
    out = median_filter(x, 1)
    expected = torch.zeros_like(x)
    expected[..., 5:] = 1.0
    assert torch.equal(out, expected)


def test_median_window_limit_is_per_box_not_per_axis():
    from gpuprep.functional.median import check_window

    check_window((5, 5, 5))  # 11^3 values: the largest accepted cube
    check_window((0, 0, 60))  # 121 values along one axis
    with pytest.raises(ValueError, match="at most 1331"):
        check_window((5, 5, 6))
    with pytest.raises(ValueError, match="radius"):
        median_filter(torch.zeros(1, 1, 4, 4, 4), 6)


def test_median_with_a_long_thin_window_still_matches_scipy():
    volume = torch.rand(1, 1, 5, 6, 30, generator=torch.Generator().manual_seed(0))
    out = median_filter(volume, (0, 1, 12))
    expected = ndi.median_filter(volume[0, 0].numpy(), size=(1, 3, 25), mode="reflect")
    torch.testing.assert_close(out[0, 0], torch.from_numpy(expected), rtol=0, atol=0)
