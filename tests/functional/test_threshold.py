"""Otsu thresholds against skimage.filters.threshold_otsu (within one bin width, or exact from its histogram)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from gpuprep.functional.threshold import otsu_from_histogram, otsu_threshold


def _head(seed=0, shape=(18, 20, 16)) -> np.ndarray:
    """A noisy head: bright shell and brain, dark background with speckle, a dark cavity inside."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    image = np.where(radius < 0.8, 100.0, 5.0) + rng.normal(0, 8, size=shape)
    image[radius < 0.2] = 10.0  # a dark cavity: a hole in the thresholded mask
    image[1, 1, 1] = image[2, 15, 3] = 150.0  # isolated bright specks: extra components
    return image.astype(np.float32)


@pytest.mark.parametrize("kind", ["head", "bimodal", "skewed", "constant"])
def test_otsu_matches_skimage_within_one_bin(kind, device):
    rng = np.random.default_rng(3)
    image = {
        "head": _head(),
        "bimodal": np.concatenate([rng.normal(0, 1, 3000), rng.normal(6, 2, 1000)]).astype(np.float32),
        "skewed": rng.lognormal(0, 1, 4000).astype(np.float32),
        "constant": np.full(100, 2.5, dtype=np.float32),
    }[kind]
    x = torch.from_numpy(image).reshape(1, 1, -1).to(device)
    ours = otsu_threshold(x).item()
    width = (image.max() - image.min()) / 256
    assert abs(ours - threshold_otsu(image, nbins=256)) <= width + 1e-6


def test_otsu_from_skimage_histogram_is_exact():
    image = _head(1)
    from skimage.exposure import histogram

    counts, centers = histogram(image.ravel(), 256, source_range="image")
    ours = otsu_from_histogram(torch.from_numpy(counts)[None], torch.from_numpy(centers)[None])
    assert ours.item() == threshold_otsu(image, nbins=256)


def test_otsu_batched_and_masked():
    images = [_head(seed) * (seed + 1) for seed in range(3)]
    x = torch.stack([torch.from_numpy(i) for i in images])[:, None]
    thresholds = otsu_threshold(x)
    for index, image in enumerate(images):
        assert abs(thresholds[index].item() - threshold_otsu(image)) <= (image.max() - image.min()) / 256 + 1e-5
    mask = torch.from_numpy(images[0] > 20)[None, None]
    masked = otsu_threshold(x[:1], mask).item()
    inside = images[0][images[0] > 20]
    assert abs(masked - threshold_otsu(inside)) <= (inside.max() - inside.min()) / 256 + 1e-5
