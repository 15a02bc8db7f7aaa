"""Intensity maps against NumPy formulas and MONAI's ScaleIntensityRange: per sample, per channel, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuprep.functional.intensity import (
    broadcast_stat,
    clip_intensity,
    mask_fill,
    masked_mean_std,
    rescale_linear,
    scale_intensity_range,
    z_normalize,
)


def _batch(seed=0, shape=(3, 2, 4, 5, 6), dtype=np.float64) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * 10 + 50).astype(dtype)


def test_broadcast_stat_views_per_sample_and_per_channel_statistics():
    x = torch.zeros(2, 3, 4, 4, 4)
    assert broadcast_stat(torch.arange(2.0), x).shape == (2, 1, 1, 1, 1)
    assert broadcast_stat(torch.zeros(2, 3), x).shape == (2, 3, 1, 1, 1)


@pytest.mark.parametrize("clip", [False, True])
def test_rescale_linear_matches_numpy_per_sample(clip, device):
    x = _batch()
    low, high = np.percentile(x, 5, axis=(1, 2, 3, 4)), np.percentile(x, 95, axis=(1, 2, 3, 4))
    out = rescale_linear(torch.from_numpy(x).to(device), torch.from_numpy(low), torch.from_numpy(high), -1.0, 2.0,
                         clip=clip)
    lo, hi = low[:, None, None, None, None], high[:, None, None, None, None]
    expected = (x - lo) / (hi - lo) * 3.0 - 1.0
    if clip:
        expected = np.clip(expected, -1.0, 2.0)
    np.testing.assert_allclose(out.cpu().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_rescale_linear_per_channel_and_degenerate_samples_unchanged():
    x = _batch(1, (2, 2, 3, 3, 3))
    x[1, 1] = 7.0  # a constant channel: no range to map
    low, high = x.min(axis=(2, 3, 4)), x.max(axis=(2, 3, 4))
    high[0, 0] = np.inf  # a bound that is not finite: left alone too
    out = rescale_linear(torch.from_numpy(x), torch.from_numpy(low), torch.from_numpy(high), 0.0, 1.0).numpy()
    for b, c in [(0, 1), (1, 0)]:
        np.testing.assert_allclose(out[b, c], (x[b, c] - low[b, c]) / (high[b, c] - low[b, c]), atol=1e-12)
    np.testing.assert_array_equal(out[1, 1], x[1, 1])
    np.testing.assert_array_equal(out[0, 0], x[0, 0])


@pytest.mark.parametrize(("b_min", "b_max", "clip"), [(0.0, 1.0, False), (0.0, 1.0, True), (None, None, False)])
def test_scale_intensity_range_matches_monai(b_min, b_max, clip):
    transforms = pytest.importorskip("monai.transforms")
    x = _batch(2, (1, 1, 5, 6, 7), np.float32) * 40 - 2000
    reference = transforms.ScaleIntensityRange(-1000, 1000, b_min, b_max, clip=clip)(x[0])
    out = scale_intensity_range(torch.from_numpy(x), -1000, 1000, b_min, b_max, clip=clip)
    np.testing.assert_allclose(out[0].numpy(), np.asarray(reference), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="must differ"):
        scale_intensity_range(torch.from_numpy(x), 5, 5, 0, 1)


def test_clip_intensity_is_numpy_clip():
    x = _batch(3)
    np.testing.assert_array_equal(clip_intensity(torch.from_numpy(x), 45, 55).numpy(), np.clip(x, 45, 55))
    np.testing.assert_array_equal(clip_intensity(torch.from_numpy(x), None, 50).numpy(), np.minimum(x, 50))


@pytest.mark.parametrize("correction", [0, 1])
@pytest.mark.parametrize("channel_wise", [False, True])
def test_masked_mean_std_match_numpy(correction, channel_wise, device):
    x = _batch(4)
    mask = np.random.default_rng(5).random((3, 1, 4, 5, 6)) > 0.4
    mean, std, count = masked_mean_std(torch.from_numpy(x).to(device), torch.from_numpy(mask).to(device),
                                       channel_wise=channel_wise, correction=correction)
    for b in range(3):
        channels = [[0], [1]] if channel_wise else [[0, 1]]
        for index, chans in enumerate(channels):
            values = x[b, chans][np.broadcast_to(mask[b], x[b, chans].shape)]
            at = (b, index) if channel_wise else (b,)
            assert mean[at].item() == pytest.approx(values.mean(), rel=1e-12)
            assert std[at].item() == pytest.approx(values.std(ddof=correction), rel=1e-10)
            assert count[at].item() == values.size


def test_masked_mean_std_without_mask_and_of_an_empty_mask():
    x = _batch(6)
    mean, std, count = masked_mean_std(torch.from_numpy(x), correction=0)
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=(1, 2, 3, 4)), rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), x.std(axis=(1, 2, 3, 4)), rtol=1e-10)
    assert count.tolist() == [x[0].size] * 3
    empty = torch.zeros(3, 1, 4, 5, 6, dtype=torch.bool)
    mean, std, count = masked_mean_std(torch.from_numpy(x), empty)
    assert torch.isnan(mean).all() and torch.isnan(std).all() and count.tolist() == [0, 0, 0]


def test_z_normalize_matches_numpy_and_leaves_undefined_statistics_alone():
    x = _batch(7)
    mean, std = x.mean(axis=(1, 2, 3, 4)), x.std(axis=(1, 2, 3, 4))
    std[1] = 0.0  # a constant sample: divided by 1
    mean[2] = np.nan  # an empty mask: unchanged
    out = z_normalize(torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(std)).numpy()
    np.testing.assert_allclose(out[0], (x[0] - mean[0]) / std[0], atol=1e-12)
    np.testing.assert_allclose(out[1], x[1] - mean[1], atol=1e-12)
    np.testing.assert_array_equal(out[2], x[2])


def test_z_normalize_only_inside_keeps_the_other_voxels():
    x = _batch(8, (1, 1, 4, 5, 6), np.float32)
    inside = torch.from_numpy(x > 50)
    out = z_normalize(torch.from_numpy(x), torch.tensor([50.0]), torch.tensor([10.0]), inside).numpy()
    np.testing.assert_allclose(out, np.where(x > 50, (x - 50) / 10, x), rtol=1e-6, atol=1e-6)
    assert out.dtype == np.float32


def test_mask_fill_is_numpy_where():
    x = _batch(9)
    inside = np.random.default_rng(9).random((3, 1, 4, 5, 6)) > 0.5
    out = mask_fill(torch.from_numpy(x), torch.from_numpy(inside), -5.0).numpy()
    np.testing.assert_array_equal(out, np.where(inside, x, -5.0))
