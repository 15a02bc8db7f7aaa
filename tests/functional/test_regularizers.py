"""Diffusion and bending energies against NumPy differences and gradients, and exact values on polynomial fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from gpuprep.functional.regularizers import bending_energy, diffusion_energy


def _np_diffusion(field: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """sum over components and axes of the mean squared forward difference, one field [C, D, H, W]."""
    return sum(np.mean((np.diff(c, axis=j) / spacing[j]) ** 2) for c in field for j in range(3))


def _np_bending(field: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """sum over components of mean(u_jj**2) + 2 mean(u_jl**2) (j < l), with numpy.diff."""
    total = 0.0
    for c in field:
        for j in range(3):
            total += np.mean((np.diff(c, n=2, axis=j) / spacing[j] ** 2) ** 2)
            for m in range(j + 1, 3):
                total += 2 * np.mean((np.diff(np.diff(c, axis=j), axis=m) / (spacing[j] * spacing[m])) ** 2)
    return total


def _smooth_fields(batch=2, shape=(9, 10, 8), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.stack([gaussian_filter(rng.normal(size=shape), 1.5) * 10 for _ in range(3)])
                     for _ in range(batch)])


def _positions(shape, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"))


@pytest.mark.parametrize("spacing", [None, (0.8, 1.5, 3.0)])
def test_random_fields_match_numpy_differences(spacing, device):
    fields = _smooth_fields()
    steps = (1.0, 1.0, 1.0) if spacing is None else spacing
    tensor = torch.as_tensor(fields, device=device)
    diffusion, bending = diffusion_energy(tensor, spacing), bending_energy(tensor, spacing)
    assert diffusion.shape == bending.shape == (2,) and diffusion.dtype == torch.float64
    np.testing.assert_allclose(diffusion.cpu().numpy(), [_np_diffusion(f, steps) for f in fields], rtol=1e-12)
    np.testing.assert_allclose(bending.cpu().numpy(), [_np_bending(f, steps) for f in fields], rtol=1e-12)


def test_a_smooth_field_agrees_with_numpy_gradient_estimates():
    # on a smooth field forward differences and numpy.gradient's central ones estimate the same derivatives
    shape = (40, 40, 40)
    x = _positions(shape) / 40.0
    field = np.stack([np.sin(2 * x[0] + x[1]), np.cos(x[1] - x[2]), x[0] * x[2] ** 2]) * 40.0
    first = [np.gradient(c) for c in field]  # first[k][j] = du_k/dx_j
    diffusion = sum(np.mean(d**2) for derivatives in first for d in derivatives)
    # the full Hessian counts u_jl and u_lj: the same as u_jj terms plus twice the mixed ones
    bending = sum(np.mean(np.gradient(d, axis=m) ** 2) for derivatives in first for d in derivatives for m in range(3))
    tensor = torch.as_tensor(field[None])
    np.testing.assert_allclose(float(diffusion_energy(tensor)[0]), diffusion, rtol=0.03)  # 1.7% apart
    np.testing.assert_allclose(float(bending_energy(tensor)[0]), bending, rtol=0.06)  # 3.8% apart


def test_zero_and_constant_fields_cost_nothing(device):
    assert bool((diffusion_energy(torch.zeros(2, 3, 4, 5, 6, device=device)) == 0).all())
    constant = torch.tensor([1.0, -2.0, 0.5], device=device).view(1, 3, 1, 1, 1).expand(2, 3, 4, 5, 6)
    assert bool((diffusion_energy(constant) == 0).all()) and bool((bending_energy(constant) == 0).all())


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.2, 2.5)])
def test_an_affine_field_does_not_bend_and_diffuses_by_its_squared_slopes(spacing, device):
    shape = (6, 7, 5)
    matrix = np.random.default_rng(1).uniform(-0.5, 0.5, size=(3, 3))
    offset = np.array([1.0, 2.0, -3.0])[:, None, None, None]
    field = np.einsum("kj,j...->k...", matrix, _positions(shape, spacing)) + offset
    tensor = torch.as_tensor(field[None], device=device)
    np.testing.assert_allclose(diffusion_energy(tensor, spacing).cpu().numpy(), [np.sum(matrix**2)], rtol=1e-12)
    np.testing.assert_allclose(bending_energy(tensor, spacing).cpu().numpy(), [0.0], atol=1e-12)


def test_quadratic_fields_give_their_second_derivatives():
    shape = (6, 7, 8)
    x = _positions(shape).astype(np.float64)
    field = np.zeros((3, *shape))
    field[0] = 0.3 * x[1] ** 2  # u_HH = 0.6
    field[2] = 0.25 * x[0] * x[2]  # u_DW = 0.25, counted twice
    expected = 0.6**2 + 2 * 0.25**2
    np.testing.assert_allclose(bending_energy(torch.as_tensor(field[None])).numpy(), [expected], rtol=1e-12)


def test_spacing_scales_the_energies():
    field = torch.as_tensor(_smooth_fields(batch=1))
    for factor in (0.5, 2.0):
        spacing = (factor, factor, factor)
        torch.testing.assert_close(diffusion_energy(field, spacing), diffusion_energy(field) / factor**2)
        torch.testing.assert_close(bending_energy(field, spacing), bending_energy(field) / factor**4)
    # one row per sample
    fields = torch.as_tensor(_smooth_fields(batch=2))
    rows = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.5, 1.5]])
    torch.testing.assert_close(diffusion_energy(fields, rows)[1:], diffusion_energy(fields[1:], (2.0, 0.5, 1.5)))
    torch.testing.assert_close(bending_energy(fields, rows)[1:], bending_energy(fields[1:], (2.0, 0.5, 1.5)))


def test_a_batch_equals_its_samples_one_by_one(device):
    fields = torch.as_tensor(_smooth_fields(batch=3), dtype=torch.float32, device=device)
    for energy in (diffusion_energy, bending_energy):
        singles = torch.cat([energy(fields[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(energy(fields), singles)


def test_short_axes_count_as_flat():
    field = _smooth_fields(batch=1, shape=(1, 6, 2))[0]
    tensor = torch.as_tensor(field[None])
    # D has one voxel (no derivative), W two (a first but no second derivative)
    expected_diffusion = sum(np.mean(np.diff(c, axis=j) ** 2) for c in field for j in (1, 2))
    expected_bending = sum(np.mean(np.diff(c, n=2, axis=1) ** 2) + 2 * np.mean(np.diff(np.diff(c, axis=1), axis=2) ** 2)
                           for c in field)
    np.testing.assert_allclose(diffusion_energy(tensor).numpy(), [expected_diffusion], rtol=1e-12)
    np.testing.assert_allclose(bending_energy(tensor).numpy(), [expected_bending], rtol=1e-12)


def test_half_precision_is_computed_in_float32():
    field = torch.as_tensor(_smooth_fields(batch=1), dtype=torch.float16)
    assert diffusion_energy(field).dtype == bending_energy(field).dtype == torch.float32


def test_gradients_flow():
    field = torch.randn(2, 3, 4, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    field.requires_grad_()
    spacing = (0.8, 1.3, 2.0)
    assert torch.autograd.gradcheck(lambda f: diffusion_energy(f, spacing), (field,))
    assert torch.autograd.gradcheck(lambda f: bending_energy(f, spacing), (field,))


def test_no_host_synchronisation(forbid_host_sync, device):
    field = torch.rand(2, 3, 5, 5, 5, device=device)
    forbid_host_sync()
    diffusion_energy(field, (1.0, 2.0, 3.0))
    bending_energy(field)


def test_bad_arguments():
    with pytest.raises(ValueError, match="field must be"):
        diffusion_energy(torch.zeros(3, 4, 4, 4))
    with pytest.raises(TypeError, match="floating point"):
        bending_energy(torch.zeros(1, 3, 4, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="spacing"):
        diffusion_energy(torch.zeros(1, 3, 4, 4, 4), (1.0, 2.0))
    with pytest.raises(ValueError, match="positive"):
        bending_energy(torch.zeros(1, 3, 4, 4, 4), (1.0, 0.0, 1.0))
