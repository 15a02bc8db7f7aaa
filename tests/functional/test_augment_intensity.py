"""Intensity augmentation math: per-sample noise streams and polynomial bias fields (TorchIO conventions)."""

from __future__ import annotations

import numpy as np
import torch

from gpuprep.functional.augment_intensity import bias_field, bias_field_coordinates, draw_noise


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
