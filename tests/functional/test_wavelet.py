"""Wavelet shrinkage (ptwt) against skimage.restoration.denoise_wavelet and estimate_sigma."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("ptwt")
restoration = pytest.importorskip("skimage.restoration")

from gpuprep.functional.wavelet import default_wavelet_levels, estimate_sigma, wavelet_denoise  # noqa: E402


def _noisy(rng, shape, dtype=np.float64) -> np.ndarray:
    clean = np.zeros(shape)
    clean[2:-2, 3:-3, 2:-4] = 1.0
    return (clean + 0.3 * rng.normal(size=shape)).astype(dtype)


def _skimage(volume, **kwargs) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pywt warns when a level is "too high" for a small volume
        return restoration.denoise_wavelet(volume, channel_axis=None, **kwargs)


@pytest.mark.parametrize("shape", [(16, 16, 16), (13, 17, 11)])
@pytest.mark.parametrize("wavelet", ["db1", "db2", "sym4"])
@pytest.mark.parametrize("method", ["BayesShrink", "VisuShrink"])
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_matches_skimage_float64(shape, wavelet, method, mode, rng):
    """Estimated sigma and default levels; tolerance 1e-10 (float64, ptwt vs pywt rounding)."""
    volume = _noisy(rng, shape)
    reference = _skimage(volume, wavelet=wavelet, method=method, mode=mode)
    out = wavelet_denoise(torch.from_numpy(volume)[None, None], wavelet, method, mode)
    np.testing.assert_allclose(out[0, 0].numpy(), reference, rtol=0, atol=1e-10)


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("sigma", [None, 0.25])
def test_matches_skimage_float32_levels_and_sigma(levels, sigma, rng, device):
    """float32 (both sides compute in float32): tolerance 1e-5 of the intensity range."""
    volume = _noisy(rng, (13, 17, 11), np.float32)
    reference = _skimage(volume, wavelet="db2", wavelet_levels=levels, sigma=sigma)
    x = torch.from_numpy(volume)[None, None].to(device)
    out = wavelet_denoise(x, "db2", "BayesShrink", "soft", levels, sigma)
    assert out.dtype == torch.float32 and out.device.type == device.type
    np.testing.assert_allclose(out[0, 0].cpu().numpy(), reference, rtol=0, atol=1e-5 * np.ptp(volume))


def test_estimate_sigma_matches_skimage(rng):
    """Tolerance 1e-12 relative (float64), odd and even shapes (zero coefficients are ignored)."""
    for shape in [(16, 16, 16), (13, 17, 11)]:
        volume = _noisy(rng, shape)
        ours = float(estimate_sigma(torch.from_numpy(volume)[None, None]))
        assert ours == pytest.approx(restoration.estimate_sigma(volume), rel=1e-12)


def test_default_levels_are_skimages(rng):
    import pywt

    for shape, wavelet in [((64, 64, 64), "db1"), ((197, 233, 189), "db2"), ((12, 12, 12), "sym4")]:
        expected = max(pywt.dwtn_max_level(shape, wavelet) - 3, 1)
        assert default_wavelet_levels(shape, wavelet) == expected
