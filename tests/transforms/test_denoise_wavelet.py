"""WaveletDenoise against skimage.restoration (the functional shrinkage: tests/functional/test_wavelet.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpuprep as gp

pytest.importorskip("ptwt")
restoration = pytest.importorskip("skimage.restoration")

from gpuprep.transforms.denoise import WaveletDenoise  # noqa: E402
from tests.functional.test_wavelet import _noisy, _skimage  # noqa: E402


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
