"""The point-sample Mattes MI against the full joint-histogram MI and its autograd gradient, with and without numba."""

import pytest
import torch

import gpuprep.functional.mattes_points as mattes_points
from gpuprep.functional.mattes_points import fixed_bins, point_mutual_information
from gpuprep.functional.similarity import mutual_information


def _pair(seed: int = 0, batch: int = 2, count: int = 3000):
    generator = torch.Generator().manual_seed(seed)
    fixed = torch.rand(batch, 1, count, generator=generator)
    fixed[0, 0, :100] = float("nan")  # outside the mask
    moving = 3.0 * (0.7 * fixed.nan_to_num(0.3) + 0.2 * torch.rand(batch, 1, count, generator=generator))
    moving[1, 0, :50] = 5.0  # beyond the given moving range: clamped, no gradient
    return fixed, moving


def _reference(fixed, moving, fixed_range, moving_range, bins):
    moving = moving.detach().clone().requires_grad_()
    inside = ~torch.isnan(fixed)
    mi = mutual_information(fixed.nan_to_num(0.0)[..., None, None], moving[..., None, None], bins=bins,
                            mask=inside[..., None, None], fixed_range=(fixed_range[:, 0], fixed_range[:, 1]),
                            moving_range=(moving_range[:, 0], moving_range[:, 1]))
    (gradient,) = torch.autograd.grad(mi.sum(), moving)
    return mi.detach(), gradient


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("bins", [8, 32])
def test_value_and_gradient_equal_the_histogram_metric(monkeypatch, compiled, bins):
    if compiled:
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(mattes_points, "_point_kernels", lambda: None)
    fixed, moving = _pair()
    fixed_range = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    moving_range = torch.tensor([[0.0, 3.0], [-0.1, 2.5]])
    expected, expected_gradient = _reference(fixed, moving, fixed_range, moving_range, bins)
    moving = moving.clone().requires_grad_()
    mi = point_mutual_information(fixed_bins(fixed[:, 0], fixed_range, bins), moving[:, 0], moving_range)
    mi.sum().backward()
    torch.testing.assert_close(mi, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(moving.grad, expected_gradient, atol=1e-7, rtol=1e-5)
    assert bool((moving.grad[1, 0, :50] == 0).all())  # clamped samples
    assert bool((moving.grad[0, 0, :100] == 0).all())  # masked samples


def test_each_sample_of_a_batch_is_its_own_histogram():
    fixed, moving = _pair(seed=3)
    fixed_range = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    moving_range = torch.tensor([[0.0, 3.0], [-0.1, 2.5]])
    both = point_mutual_information(fixed_bins(fixed[:, 0], fixed_range), moving[:, 0], moving_range)
    for i in range(2):
        one = point_mutual_information(fixed_bins(fixed[i : i + 1, 0], fixed_range[i : i + 1]),
                                       moving[i : i + 1, 0], moving_range[i : i + 1])
        torch.testing.assert_close(one[0], both[i])


def test_too_few_bins_are_refused():
    with pytest.raises(ValueError, match="bins must be at least 4, got 3"):
        fixed_bins(torch.rand(1, 10), torch.tensor([[0.0, 1.0]]), bins=3)


def test_samples_outside_count_as_masked_out():
    fixed, moving = _pair(seed=5)
    fixed_range = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    moving_range = torch.tensor([[0.0, 3.0], [-0.1, 2.5]])
    inside = torch.rand(2, fixed.shape[-1], generator=torch.Generator().manual_seed(6)) > 0.3
    masked = torch.where(inside[:, None], fixed, torch.nan)
    expected = point_mutual_information(fixed_bins(masked[:, 0], fixed_range), moving[:, 0], moving_range)
    found = point_mutual_information(fixed_bins(fixed[:, 0], fixed_range), moving[:, 0], moving_range, inside)
    torch.testing.assert_close(found, expected)
