"""Intensity augmentation math: per-sample noise streams and polynomial bias fields (TorchIO conventions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuprep.functional.augment_intensity import (
    adjust_contrast,
    apply_noise,
    bias_field,
    bias_field_coordinates,
    bias_field_terms,
    draw_noise,
    signed_power,
)


def test_draw_noise_is_independent_of_batch():
    x = torch.zeros(3, 2, 5, 6, 7)
    noise = draw_noise(x, [11, 12, 13], count=2)
    assert noise.shape == (2, 3, 2, 5, 6, 7)
    assert torch.equal(noise[:, 2], draw_noise(x[:1], [13], count=2)[:, 0])


def test_bias_field_coordinates_match_torchio_normalisation():
    for n in (1, 2, 5, 8):
        half = n / 2
        reference = np.arange(-half, half) + 0.5
        if reference.max() > 0:
            reference = reference / reference.max()
        np.testing.assert_allclose(bias_field_coordinates(n).numpy(), reference, atol=1e-7)


def test_bias_field_batched_per_sample_coefficients():
    coefficients = torch.rand(3, 20, generator=torch.Generator().manual_seed(0)) - 0.5
    batched = bias_field((6, 7, 8), coefficients, 3)
    for index in range(3):
        torch.testing.assert_close(batched[index], bias_field((6, 7, 8), coefficients[index : index + 1], 3)[0])


def test_apply_noise_gaussian_and_rician_formulas():
    """MONAI's RandGaussianNoise x + N(mean, std) and RandRicianNoise sqrt((x + g1)^2 + g2^2), per sample."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 5, size=(2, 1, 4, 5, 6))
    noise = rng.normal(size=(2, 2, 1, 4, 5, 6))
    mean, std = np.array([0.5, -1.0]), np.array([2.0, 0.1])
    m, s = mean[:, None, None, None, None], std[:, None, None, None, None]
    gaussian = apply_noise(torch.from_numpy(x), torch.from_numpy(noise), mean, std).numpy()
    np.testing.assert_allclose(gaussian, x + m + s * noise[0], atol=1e-12)
    rician = apply_noise(torch.from_numpy(x), torch.from_numpy(noise), mean, std, kind="rician").numpy()
    np.testing.assert_allclose(rician, np.sqrt((x + m + s * noise[0]) ** 2 + (m + s * noise[1]) ** 2), atol=1e-12)
    with pytest.raises(ValueError, match="gaussian"):
        apply_noise(torch.from_numpy(x), torch.from_numpy(noise), mean, std, kind="poisson")


def test_signed_power_is_the_odd_gamma_curve_per_sample():
    x = np.random.default_rng(1).normal(size=(2, 1, 3, 4, 5))
    gamma = np.array([0.5, 2.5])
    out = signed_power(torch.from_numpy(x), gamma).numpy()
    np.testing.assert_allclose(out, np.sign(x) * np.abs(x) ** gamma[:, None, None, None, None], atol=1e-12)


def test_bias_field_terms_are_in_torchios_coefficient_order():
    """TorchIO's field for a one-hot coefficient t is exp(u^i v^j w^k) with (i, j, k) the t-th term here."""
    pytest.importorskip("torchio")
    from torchio.transforms.augmentation.intensity.random_bias_field import BiasField

    shape, order = (5, 6, 7), 2
    u, v, w = (bias_field_coordinates(n, dtype=torch.float64).numpy() for n in shape)
    terms = bias_field_terms(order)
    assert len(terms) == 10 and all(sum(term) <= order for term in terms)
    for index, (i, j, k) in enumerate(terms):
        coefficients = [1.0 if t == index else 0.0 for t in range(len(terms))]
        reference = np.log(BiasField.generate_bias_field(np.zeros((1, *shape)), order, coefficients))
        expected = u[:, None, None] ** i * v[None, :, None] ** j * w[None, None, :] ** k
        np.testing.assert_allclose(reference, expected, atol=1e-6)


@pytest.mark.parametrize("preserve_range", [False, True])
def test_adjust_contrast_per_channel_like_batchgenerators(preserve_range):
    x = np.random.default_rng(2).uniform(-1, 3, size=(2, 2, 4, 5, 6))
    factor = np.array([1.5, 0.5])
    out = adjust_contrast(torch.from_numpy(x), factor, preserve_range).numpy()
    mean = x.mean(axis=(2, 3, 4), keepdims=True)
    expected = (x - mean) * factor[:, None, None, None, None] + mean
    if preserve_range:
        expected = np.clip(expected, x.min(axis=(2, 3, 4), keepdims=True), x.max(axis=(2, 3, 4), keepdims=True))
    np.testing.assert_allclose(out, expected, atol=1e-12)
