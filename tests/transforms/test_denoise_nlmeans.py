"""NonLocalMeans against skimage.restoration.denoise_nl_means (the functional NLM: tests/functional/test_nlmeans.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.transforms.denoise import NonLocalMeans
from tests.functional.test_nlmeans import _noisy, _skimage

restoration = pytest.importorskip("skimage.restoration")


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
