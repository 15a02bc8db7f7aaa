"""WaveletDenoise and the functional wavelet shrinkage against skimage.restoration."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import gpuprep as gp

pytest.importorskip("ptwt")
restoration = pytest.importorskip("skimage.restoration")

from gpuprep.functional.wavelet import default_wavelet_levels, estimate_sigma, wavelet_denoise  # noqa: E402
from gpuprep.transforms.denoise import WaveletDenoise  # noqa: E402


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


@pytest.mark.parametrize("rescale_sigma", [True, False])
def test_transform_channels_and_samples_are_independent(rescale_sigma, rng):
    """Each channel of each sample as skimage on its own; rescale_sigma is inert on float data."""
    images = [np.stack([_noisy(rng, (12, 14, 16)) for _ in range(2)]) for _ in range(2)]
    batch = gp.collate([gp.make_sample({"image": torch.from_numpy(im)}) for im in images])
    transform = WaveletDenoise("image", method="VisuShrink", wavelet="db1", sigma=0.3, rescale_sigma=rescale_sigma)
    out = transform(batch)
    for index, image in enumerate(images):
        for channel in range(2):
            reference = _skimage(
                image[channel], wavelet="db1", method="VisuShrink", sigma=0.3, rescale_sigma=rescale_sigma
            )
            np.testing.assert_allclose(out["image"][index, channel].numpy(), reference, rtol=0, atol=1e-10)
    assert gp.get_history(out)[0][-1]["params"] == {"image": {"wavelet_levels": 1}}


def test_denoising_reduces_the_error(rng):
    clean = np.zeros((1, 32, 32, 32))
    clean[:, 8:24, 8:24, 8:24] = 1.0
    noisy = clean + 0.2 * rng.normal(size=clean.shape)
    out = WaveletDenoise("image", wavelet="db2")(gp.make_sample({"image": torch.from_numpy(noisy)}))
    assert np.mean((out["image"].numpy() - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)
