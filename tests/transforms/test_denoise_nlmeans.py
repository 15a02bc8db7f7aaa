"""NonLocalMeans and the functional NLM against skimage.restoration.denoise_nl_means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.functional.nlmeans import nl_means, nl_means_pixelwise
from gpuprep.transforms.denoise import NonLocalMeans

restoration = pytest.importorskip("skimage.restoration")


def _noisy(rng, shape=(12, 13, 14), dtype=np.float64) -> np.ndarray:
    clean = np.zeros(shape)
    clean[3:-3, 4:-4, 2:-5] = 1.0
    return (clean + 0.3 * rng.normal(size=shape)).astype(dtype)


def _skimage(volume, patch_size, patch_distance, h, sigma=0.0, fast_mode=True) -> np.ndarray:
    return restoration.denoise_nl_means(
        volume, patch_size, patch_distance, h, fast_mode=fast_mode, sigma=sigma, channel_axis=None
    )


CASES = [(3, 2, 0.3, 0.0), (5, 3, 0.4, 0.2), (1, 2, 0.3, 0.0), (7, 1, 0.5, 0.25)]


@pytest.mark.parametrize(("patch_size", "patch_distance", "h", "sigma"), CASES)
def test_fast_mode_matches_skimage_with_its_exponential(patch_size, patch_distance, h, sigma, rng, device):
    """With skimage's bit-trick exponential: 1e-12 in float64 (border voxels included)."""
    volume = _noisy(rng)
    reference = _skimage(volume, patch_size, patch_distance, h, sigma)
    x = torch.from_numpy(volume)[None, None].to(device)
    out = nl_means(x, patch_size, patch_distance, h, sigma, exact_exp=False, chunk_bytes=2**20)
    np.testing.assert_allclose(out[0, 0].cpu().numpy(), reference, rtol=0, atol=1e-12)


def test_fast_mode_float32_and_exact_exponential(rng, device):
    """float32 with skimage's exponential: 2e-6 of the range. With torch.exp the weights differ by
    up to ~4 % (Schraudolph's approximation), which moves outputs by at most 1 % of the range."""
    volume = _noisy(rng, dtype=np.float32)
    reference = _skimage(volume, 3, 2, 0.3)
    x = torch.from_numpy(volume)[None, None].to(device)
    approx = nl_means(x, 3, 2, 0.3, exact_exp=False)[0, 0].cpu().numpy()
    exact = nl_means(x, 3, 2, 0.3)[0, 0].cpu().numpy()
    assert exact.dtype == np.float32
    np.testing.assert_allclose(approx, reference, rtol=0, atol=2e-6 * np.ptp(volume))
    np.testing.assert_allclose(exact, reference, rtol=0, atol=1e-2 * np.ptp(volume))


@pytest.mark.parametrize(("patch_size", "patch_distance", "h", "sigma"), [(3, 2, 0.3, 0.0), (5, 2, 0.4, 0.2)])
def test_classic_mode_matches_skimage(patch_size, patch_distance, h, sigma, rng, device):
    """fast_mode=False (Gaussian patches, clipped search window, partial-distance cut-off): 1e-12."""
    volume = _noisy(rng, shape=(9, 10, 11))
    reference = _skimage(volume, patch_size, patch_distance, h, sigma, fast_mode=False)
    x = torch.from_numpy(volume)[None, None].to(device)
    out = nl_means_pixelwise(x, patch_size, patch_distance, h, sigma, exact_exp=False, chunk_bytes=2**20)
    np.testing.assert_allclose(out[0, 0].cpu().numpy(), reference, rtol=0, atol=1e-12)


def test_per_volume_h_equals_separate_calls(rng):
    """h as a [B, C] tensor: every volume as a call with its own scalar h (1e-12, float64)."""
    volumes = np.stack([np.stack([_noisy(rng) for _ in range(2)]) for _ in range(2)])
    h = torch.tensor([[0.2, 0.3], [0.4, 0.25]], dtype=torch.float64)
    out = nl_means(torch.from_numpy(volumes), 3, 1, h, exact_exp=False)
    for b in range(2):
        for c in range(2):
            single = nl_means(torch.from_numpy(volumes[b : b + 1, c : c + 1]), 3, 1, float(h[b, c]), exact_exp=False)
            torch.testing.assert_close(out[b, c], single[0, 0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("fast_mode", [True, False])
def test_transform_matches_skimage_per_channel(fast_mode, rng):
    image = np.stack([_noisy(rng, (9, 10, 11)) for _ in range(2)])
    sample = gp.make_sample({"image": torch.from_numpy(image)})
    out = NonLocalMeans("image", 3, 1, h=0.3, sigma=0.1, fast_mode=fast_mode, exact_exp=False)(sample)
    for channel in range(2):
        reference = _skimage(image[channel], 3, 1, 0.3, 0.1, fast_mode=fast_mode)
        np.testing.assert_allclose(out["image"][channel].numpy(), reference, rtol=0, atol=1e-12)


def test_default_h_is_the_estimated_noise_sigma(rng):
    """h=None: skimage with h = skimage.restoration.estimate_sigma of that volume (1e-10)."""
    image = _noisy(rng)[None]
    out = NonLocalMeans("image", 3, 2, exact_exp=False)(gp.make_sample({"image": torch.from_numpy(image)}))
    h = restoration.estimate_sigma(image[0])
    np.testing.assert_allclose(out["image"][0].numpy(), _skimage(image[0], 3, 2, h), rtol=0, atol=1e-10)


def test_denoising_reduces_the_error(rng):
    clean = np.zeros((1, 16, 16, 16), np.float32)
    clean[:, 4:12, 4:12, 4:12] = 1.0
    noisy = clean + 0.2 * rng.normal(size=clean.shape).astype(np.float32)
    out = NonLocalMeans("image", 3, 2, h=0.2)(gp.make_sample({"image": torch.from_numpy(noisy)}))
    assert np.abs(out["image"].numpy() - clean).mean() < 0.6 * np.abs(noisy - clean).mean()
