"""Perona-Malik anisotropic diffusion against a NumPy scheme written here, and its properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuprep.functional.diffusion import anisotropic_diffusion
from gpuprep.functional.filters import gaussian_filter


def perona_malik(image, iterations, kappa, gamma, option, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """The explicit 6-neighbour scheme as MedPy writes it (forward differences, zero past the
    border, flux differences), with the gradient per mm and the divergence weighted by
    (h_min / h)^2. With unit spacing this is MedPy's ``anisotropic_diffusion`` (option 1/2/3)."""
    out = np.array(image, dtype=np.float64, copy=True)
    h = np.asarray(spacing, dtype=np.float64)

    def conductance(s):
        if option == "exponential":
            return np.exp(-(s**2))
        if option == "quadratic":
            return 1.0 / (1.0 + s**2)
        return np.where(np.abs(s) <= np.sqrt(2.0), 0.5 * (1.0 - (s / np.sqrt(2.0)) ** 2) ** 2, 0.0)

    for _ in range(iterations):
        total = np.zeros_like(out)
        for axis in range(3):
            head = [slice(None)] * 3
            head[axis] = slice(None, -1)
            delta = np.zeros_like(out)
            delta[tuple(head)] = np.diff(out, axis=axis)
            flux = conductance(delta / h[axis] / kappa) * delta * (h.min() / h[axis]) ** 2
            tail = [slice(None)] * 3
            tail[axis] = slice(1, None)
            divergence = flux.copy()
            divergence[tuple(tail)] = np.diff(flux, axis=axis)
            total += divergence
        out += gamma * total
    return out


def _step(rng, shape=(12, 13, 14), noise=5.0) -> tuple[np.ndarray, np.ndarray]:
    clean = np.zeros(shape)
    clean[shape[0] // 2 :] = 100.0
    return clean, clean + noise * rng.normal(size=shape)


@pytest.mark.parametrize("option", ["exponential", "quadratic", "tukey"])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.7, 1.3)])
def test_matches_numpy_reference(option, spacing, rng, device):
    """float64, tolerance 1e-10 absolute on intensities of ~100."""
    _, noisy = _step(rng)
    reference = perona_malik(noisy, 6, 15.0, 0.12, option, spacing)
    x = torch.from_numpy(noisy)[None, None].to(device)
    out = anisotropic_diffusion(x, 6, 15.0, 0.12, option, spacing)
    np.testing.assert_allclose(out[0, 0].cpu().numpy(), reference, rtol=0, atol=1e-10)


def test_one_plane_slabs_give_the_same_result(rng):
    """Each step computed plane by plane (fluxes across slab borders): 1e-10 against NumPy."""
    _, noisy = _step(rng)
    out = anisotropic_diffusion(torch.from_numpy(noisy)[None, None], 4, 15.0, 0.1, "exponential", (1.5, 1, 1), 1)
    reference = perona_malik(noisy, 4, 15.0, 0.1, "exponential", (1.5, 1, 1))
    np.testing.assert_allclose(out[0, 0].numpy(), reference, rtol=0, atol=1e-10)


def test_mean_is_preserved_and_values_stay_in_range(rng):
    """Zero-flux borders: the mean is kept to 1e-12 relative; gamma <= 1/6 keeps a max principle."""
    _, noisy = _step(rng, noise=20.0)
    out = anisotropic_diffusion(torch.from_numpy(noisy)[None, None], 30, 25.0, 1.0 / 6.0, "exponential", (0.5, 1, 3))
    out = out[0, 0].numpy()
    assert out.mean() == pytest.approx(noisy.mean(), rel=1e-12)
    assert out.min() >= noisy.min() - 1e-9 and out.max() <= noisy.max() + 1e-9


def test_edges_are_kept_better_than_by_a_gaussian_of_equal_smoothing(rng):
    """Match the Gaussian's sigma so that both leave the same noise in flat regions, then compare
    the error next to the edge: diffusion must be several times closer to the clean step."""
    clean, noisy = _step(rng, shape=(24, 24, 24), noise=5.0)
    x = torch.from_numpy(noisy)[None, None]
    diffused = anisotropic_diffusion(x, 5, 12.0, 0.15, "exponential")[0, 0].numpy()
    flat = (slice(2, 8), slice(None), slice(None))  # far from the edge at 12
    target = diffused[flat].std()
    sigmas = np.linspace(0.3, 4.0, 75)
    residual = [gaussian_filter(x, s, mode="nearest")[0, 0].numpy()[flat].std() for s in sigmas]
    sigma = sigmas[np.argmin(np.abs(np.array(residual) - target))]
    smoothed = gaussian_filter(x, sigma, mode="nearest")[0, 0].numpy()
    assert abs(smoothed[flat].std() - target) < 0.15 * target
    edge = (slice(10, 14), slice(None), slice(None))
    error_diffusion = np.abs(diffused - clean)[edge].mean()
    error_gaussian = np.abs(smoothed - clean)[edge].mean()
    assert error_diffusion < 0.2 * error_gaussian
