"""The functional non-local means against skimage.restoration.denoise_nl_means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuprep.functional.nlmeans import nl_means, nl_means_pixelwise

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


def test_nonlocal_means_functional_refuses_a_huge_search_radius_before_padding():
    with pytest.raises(ValueError, match="patch_distance must be an integer from 0 to 20, got 1000"):
        nl_means(torch.zeros(1, 1, 4, 4, 4), patch_size=3, patch_distance=1000)
