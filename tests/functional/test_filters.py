"""Filters against scipy.ndimage: Gaussian, box (uniform) and separable filters (median: test_median.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from gpuprep.functional.filters import (
    BOUNDARY_MODES,
    box_filter,
    correlate1d,
    gaussian_filter,
    gaussian_kernel1d,
    separable_filter,
)
from gpuprep.functional.median import median_filter

# scipy mode -> numpy.pad mode


def _volume(rng, shape=(2, 2, 9, 11, 10), dtype=np.float32) -> np.ndarray:
    return rng.normal(size=shape).astype(dtype)


def _per_volume(function, x: np.ndarray, per_sample=None) -> np.ndarray:
    """Apply a scipy function to every [D, H, W] volume of [B, C, D, H, W]."""
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[b, c] = function(x[b, c]) if per_sample is None else function(x[b, c], per_sample[b])
    return out


def test_gaussian_kernel_is_scipys():
    """The 1D kernel (radius int(4 sigma + 0.5), normalised) gives scipy's 1D filter exactly."""
    x = np.random.default_rng(0).normal(size=41)
    for sigma in (0.3, 1.0, 2.7):
        kernel = gaussian_kernel1d(sigma)
        assert len(kernel) == 2 * int(4.0 * sigma + 0.5) + 1
        np.testing.assert_allclose(
            ndi.correlate1d(x, kernel, mode="reflect"), ndi.gaussian_filter1d(x, sigma), rtol=0, atol=1e-15
        )


@pytest.mark.parametrize("mode", BOUNDARY_MODES)
@pytest.mark.parametrize("sigma", [1.0, (0.5, 1.3, 2.2), (0.0, 1.0, 3.5)])
def test_gaussian_filter_matches_scipy(mode, sigma, rng, device):
    """Tolerance: 1e-12 absolute in float64 (only summation order differs)."""
    x = _volume(rng, dtype=np.float64)
    out = gaussian_filter(torch.from_numpy(x).to(device), sigma, mode=mode, cval=0.0)
    reference = _per_volume(lambda v: ndi.gaussian_filter(v, sigma, mode=mode), x)
    assert out.device.type == device.type and out.dtype == torch.float64
    np.testing.assert_allclose(out.cpu().numpy(), reference, rtol=0, atol=1e-12)


def test_gaussian_filter_float32_truncate(rng, device):
    """float32 against scipy (which accumulates in float64): 1e-5 relative to the data range."""
    x = _volume(rng)
    out = gaussian_filter(torch.from_numpy(x).to(device), (1.5, 0.7, 2.0), truncate=2.5)
    reference = _per_volume(lambda v: ndi.gaussian_filter(v, (1.5, 0.7, 2.0), truncate=2.5), x)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.cpu().numpy(), reference, rtol=0, atol=1e-5 * np.ptp(x))


def test_gaussian_filter_per_sample_sigma(rng, device):
    """Sigma [B, 3] (one row per sample, zeros included): each sample as scipy with its own row."""
    x = _volume(rng, shape=(3, 2, 10, 9, 8), dtype=np.float64)
    sigmas = np.array([[1.0, 2.0, 0.5], [0.0, 3.0, 1.0], [0.7, 0.7, 0.7]])
    out = gaussian_filter(torch.from_numpy(x).to(device), torch.from_numpy(sigmas))
    reference = _per_volume(lambda v, s: ndi.gaussian_filter(v, s), x, per_sample=sigmas)
    np.testing.assert_allclose(out.cpu().numpy(), reference, rtol=0, atol=1e-12)


def test_gaussian_filter_zero_sigma_is_a_copy(rng):
    x = torch.from_numpy(_volume(rng))
    out = gaussian_filter(x, 0.0)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_gaussian_filter_half_precision(rng, device):
    """float16 is accumulated in float32 and returned as float16 (half-precision rounding, 2e-3)."""
    x = _volume(rng)
    out = gaussian_filter(torch.from_numpy(x).to(device).half(), 1.0)
    reference = _per_volume(lambda v: ndi.gaussian_filter(v, 1.0), x)
    assert out.dtype == torch.float16
    np.testing.assert_allclose(out.float().cpu().numpy(), reference, rtol=0, atol=2e-3 * np.ptp(x))


def test_correlate1d_per_sample_weights_equal_separate_calls(rng):
    x = torch.from_numpy(_volume(rng, shape=(2, 1, 6, 7, 8), dtype=np.float64))
    bank = np.array([[0.2, 0.5, 0.3], [0.0, 1.0, 0.0]])
    out = correlate1d(x, bank, axis=1, mode="wrap")
    for b in range(2):
        single = correlate1d(x[b : b + 1], bank[b], axis=1, mode="wrap")
        torch.testing.assert_close(out[b : b + 1], single, rtol=0, atol=1e-15)
        reference = ndi.correlate1d(x[b, 0].numpy(), bank[b], axis=1, mode="wrap")
        np.testing.assert_allclose(out[b, 0].numpy(), reference, rtol=0, atol=1e-14)


@pytest.mark.parametrize("mode", BOUNDARY_MODES)
@pytest.mark.parametrize("size", [3, (2, 4, 5), (1, 1, 6)])
def test_box_filter_matches_uniform_filter(mode, size, rng, device):
    """Including even sizes (one more voxel before the centre than after); 1e-12 in float64."""
    x = _volume(rng, dtype=np.float64)
    out = box_filter(torch.from_numpy(x).to(device), size, mode=mode)
    reference = _per_volume(lambda v: ndi.uniform_filter(v, size, mode=mode), x)
    np.testing.assert_allclose(out.cpu().numpy(), reference, rtol=0, atol=1e-12)


def test_filter_argument_errors():
    x = torch.zeros(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="boundary mode"):
        gaussian_filter(x, 1.0, mode="symmetric")
    with pytest.raises(ValueError, match="sigma"):
        gaussian_filter(x, (1.0, 2.0))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_filter(x, -1.0)
    with pytest.raises(ValueError, match="radius"):
        median_filter(x, -1)
    with pytest.raises(ValueError, match="size"):
        box_filter(x, 0)
    with pytest.raises(TypeError, match="floating"):
        gaussian_filter(x.long(), 1.0)


@pytest.mark.parametrize("mode", BOUNDARY_MODES)
def test_separable_filter_in_one_plane_slabs_matches_scipy(mode, rng):
    """Slabs of one plane (halo from the boundary mode, cval planes for 'constant'): 1e-12."""
    x = _volume(rng, shape=(2, 1, 7, 6, 5), dtype=np.float64)
    kernels = [[0.1, 0.2, 0.3, 0.4], None, [[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]]]
    out = separable_filter(torch.from_numpy(x), kernels, mode=mode, cval=1.5, slab_bytes=1)

    def reference(v, b):
        v = ndi.correlate1d(v, kernels[0], axis=0, mode=mode, cval=1.5)
        return ndi.correlate1d(v, kernels[2][b], axis=2, mode=mode, cval=1.5)

    expected = _per_volume(reference, x, per_sample=[0, 1])
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)
