"""GaussianDenoise (sigma in mm) and MedianDenoise against scipy.ndimage."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import gpuprep as gp
from gpuprep.transforms.denoise import GaussianDenoise, MedianDenoise
from tests.conftest import oblique_affine


def _image(rng, shape=(2, 11, 12, 13), dtype=np.float64) -> np.ndarray:
    return rng.normal(size=shape).astype(dtype)


def _spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing as the lengths of the affine's first three columns."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


@pytest.mark.parametrize("sigma", [2.0, (1.0, 2.5, 0.0)])
def test_gaussian_in_mm_matches_scipy_on_an_oblique_anisotropic_grid(sigma, rng, device):
    """Tolerance 1e-12 (float64): scipy with sigma_mm / spacing on every channel."""
    affine = oblique_affine(spacing=(1.2, 0.9, 2.5))
    image = _image(rng)
    sample = gp.make_sample({"image": torch.from_numpy(image).to(device)}, affine=affine)
    out = GaussianDenoise("image", sigma=sigma)(sample)
    sigma_voxel = np.broadcast_to(sigma, 3) / _spacing(affine)
    for channel in range(image.shape[0]):
        reference = ndi.gaussian_filter(image[channel], sigma_voxel, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(out["image"][channel].cpu().numpy(), reference, rtol=0, atol=1e-12)
    recorded = gp.get_history(out)[-1]["params"]["image"]["sigma_voxel"]
    np.testing.assert_allclose(recorded, sigma_voxel, rtol=1e-12)


def test_gaussian_batch_with_different_spacings_matches_scipy_per_sample(rng, device):
    """One call smooths every sample by the same mm; float32, tolerance 1e-5 of the range."""
    spacings = [(1.0, 1.0, 1.0), (2.0, 0.5, 1.5), (0.8, 0.8, 3.0)]
    images = [_image(rng, dtype=np.float32) for _ in spacings]
    samples = [
        gp.make_sample({"image": torch.from_numpy(im).to(device)}, affine=np.diag([*s, 1.0]))
        for im, s in zip(images, spacings)
    ]
    out = GaussianDenoise("image", sigma=1.5, mode="nearest")(gp.collate(samples))
    for index, (image, spacing) in enumerate(zip(images, spacings)):
        for channel in range(image.shape[0]):
            reference = ndi.gaussian_filter(image[channel], 1.5 / np.array(spacing), mode="nearest")
            np.testing.assert_allclose(
                out["image"][index, channel].cpu().numpy(), reference, rtol=0, atol=1e-5 * np.ptp(image)
            )


def test_gaussian_in_voxels_ignores_the_affine(rng):
    image = _image(rng)
    sample = gp.make_sample({"image": torch.from_numpy(image)}, affine=np.diag([3.0, 2.0, 1.0, 1.0]))
    out = GaussianDenoise("image", sigma=(1.0, 0.5, 2.0), units="voxel", mode="mirror", truncate=3.0)(sample)
    reference = ndi.gaussian_filter(image[1], (1.0, 0.5, 2.0), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(out["image"][1].numpy(), reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("radius", [1, 2, (1, 2, 0)])
@pytest.mark.parametrize("mode", ["reflect", "nearest", "constant"])
def test_median_matches_scipy_exactly(radius, mode, rng, device):
    image = _image(rng, dtype=np.float32)
    sample = gp.make_sample({"image": torch.from_numpy(image).to(device)})
    out = MedianDenoise("image", radius=radius, mode=mode, chunk_mb=1)(sample)
    size = tuple(2 * np.broadcast_to(radius, 3) + 1)
    for channel in range(image.shape[0]):
        reference = ndi.median_filter(image[channel], size=size, mode=mode)
        np.testing.assert_array_equal(out["image"][channel].cpu().numpy(), reference)


def test_median_removes_salt_and_pepper(rng):
    clean = np.zeros((1, 16, 16, 16), np.float32)
    clean[:, 4:12, 4:12, 4:12] = 1.0
    noisy = clean.copy()
    spots = rng.random(noisy.shape) < 0.02
    noisy[spots] = rng.choice([-20.0, 20.0], size=spots.sum())
    out = MedianDenoise("image", radius=1)(gp.make_sample({"image": torch.from_numpy(noisy)}))
    assert np.abs(out["image"].numpy() - clean).mean() < 0.1 * np.abs(noisy - clean).mean()
