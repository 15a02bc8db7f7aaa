"""N4's histogram sharpening against a NumPy transcription of ITK's ``SharpenImage`` loops."""

import math

import numpy as np
import pytest
import torch

from gpuprep.functional.histogram_sharpen import sharpen_log_intensities


def itk_sharpen(values: np.ndarray, bins: int, fwhm: float, noise: float) -> np.ndarray:
    """ITK's loops, one voxel at a time, with NumPy's FFT (ITK's vnl FFT is unnormalised; the ratio E is not)."""
    low, high = values.min(), values.max()
    slope = (high - low) / (bins - 1)
    histogram = np.zeros(bins)
    for value in values:
        position = (value - low) / slope
        index = math.floor(position)
        offset = position - index
        if offset == 0.0:
            histogram[index] += 1.0
        elif index < bins - 1:
            histogram[index] += 1.0 - offset
            histogram[index + 1] += offset
    exponent = math.ceil(math.log(bins) / math.log(2.0)) + 1
    padded = 2**exponent
    shift = math.floor(0.5 * (padded - bins))
    signal = np.zeros(padded, dtype=complex)
    signal[shift : shift + bins] = histogram
    signal_f = np.fft.fft(signal)
    scaled_fwhm = fwhm / slope
    exp_factor = 4.0 * math.log(2.0) / scaled_fwhm**2
    scale = 2.0 * math.sqrt(math.log(2.0) / math.pi) / scaled_fwhm
    gaussian = np.zeros(padded, dtype=complex)
    gaussian[0] = scale
    for n in range(1, padded // 2 + 1):
        gaussian[n] = gaussian[padded - n] = scale * math.exp(-(n**2) * exp_factor)
    gaussian[padded // 2] = scale * math.exp(-0.25 * padded**2 * exp_factor)
    gaussian_f = np.fft.fft(gaussian)
    wiener = np.conj(gaussian_f) / (np.conj(gaussian_f) * gaussian_f + noise)
    deconvolved = np.maximum(np.fft.ifft(signal_f * wiener.real).real, 0.0)
    centres = low + (np.arange(padded) - shift) * slope
    numerator = np.fft.ifft(np.fft.fft(centres * deconvolved) * gaussian_f).real
    denominator = np.fft.ifft(np.fft.fft(deconvolved) * gaussian_f).real
    expected = np.where(denominator != 0, numerator / np.where(denominator != 0, denominator, 1), 0.0)
    expected = expected[shift : shift + bins]
    out = np.empty_like(values)
    for i, value in enumerate(values):
        position = (value - low) / slope
        index = math.floor(position)
        if index < bins - 1:
            out[i] = expected[index] + (expected[index + 1] - expected[index]) * (position - index)
        else:
            out[i] = expected[-1]
    return out


def two_blurred_peaks(seed: int, size: int = 600) -> np.ndarray:
    rng = np.random.default_rng(seed)
    peaks = rng.choice([4.0, 4.6, 5.1], size=size, p=[0.2, 0.5, 0.3])
    return peaks + rng.normal(0.0, 0.08, size)


@pytest.mark.parametrize(("bins", "fwhm", "noise"), [(200, 0.15, 0.01), (64, 0.3, 0.1), (17, 0.05, 0.001)])
def test_sharpening_equals_itks_loops(bins, fwhm, noise):
    values = two_blurred_peaks(0)
    expected = itk_sharpen(values, bins, fwhm, noise)
    got = sharpen_log_intensities(torch.from_numpy(values)[None], torch.ones(1, len(values), dtype=torch.bool),
                                  bins, fwhm, noise)
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=0, atol=1e-9)


def test_each_sample_of_a_batch_has_its_own_histogram_and_mask():
    first, second = two_blurred_peaks(1), two_blurred_peaks(2) * 0.5 + 1.0
    mask = np.random.default_rng(3).random((2, len(first))) < 0.7
    values = torch.from_numpy(np.stack([first, second]))
    got = sharpen_log_intensities(values, torch.from_numpy(mask)).numpy()
    for row, data in enumerate([first, second]):
        inside = mask[row]
        np.testing.assert_allclose(got[row, inside], itk_sharpen(data[inside], 200, 0.15, 0.01), atol=1e-9)
        np.testing.assert_array_equal(got[row, ~inside], data[~inside])  # outside the mask: unchanged


def test_sharpening_narrows_the_peaks():
    values = two_blurred_peaks(4)
    got = sharpen_log_intensities(torch.from_numpy(values)[None], torch.ones(1, len(values), dtype=torch.bool))[0]
    near = np.abs(values - 4.6) < 0.1
    assert got.numpy()[near].std() < 0.8 * values[near].std()


def test_a_constant_or_empty_sample_is_left_unchanged():
    values = torch.tensor([[2.0, 2.0, 2.0], [1.0, 3.0, 5.0]])
    mask = torch.tensor([[True, True, True], [False, False, False]])
    assert torch.equal(sharpen_log_intensities(values, mask), values)
    assert sharpen_log_intensities(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool)).shape == (2, 0)


def test_bins_below_two_are_refused():
    with pytest.raises(ValueError, match="bins must be at least 2"):
        sharpen_log_intensities(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), bins=1)
