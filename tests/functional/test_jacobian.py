"""Jacobian determinants against numpy.gradient and numpy.linalg.det; exact linear fields; folding fractions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from gpuprep.functional.jacobian import folding_fraction, jacobian_determinant


def _np_determinant(field: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """det(I + du/dx) of one field [3, D, H, W] with numpy.gradient (edge_order=1) and numpy.linalg.det."""
    jacobian = np.empty((*field.shape[1:], 3, 3))
    for k in range(3):
        for j, derivative in enumerate(np.gradient(field[k], *spacing, edge_order=1)):
            jacobian[..., k, j] = derivative
    return np.linalg.det(jacobian + np.eye(3))


def _smooth_field(shape=(10, 12, 9), seed=0, amplitude=2.0, sigma=2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([amplitude * gaussian_filter(rng.normal(size=shape), sigma) / 0.1 for _ in range(3)])


def _positions(shape, spacing) -> np.ndarray:
    """Physical coordinates [3, D, H, W] of the voxel centres."""
    return np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"))


def test_a_zero_field_gives_one(device):
    det = jacobian_determinant(torch.zeros(2, 3, 5, 6, 7, device=device))
    assert det.shape == (2, 5, 6, 7) and det.dtype == torch.float32
    assert bool((det == 1).all())


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.5, 3.0)])
def test_a_linear_field_gives_det_of_identity_plus_a_everywhere(spacing, device):
    matrix = np.random.default_rng(1).uniform(-0.4, 0.4, size=(3, 3))
    shape = (5, 7, 6)
    field = np.einsum("kj,j...->k...", matrix, _positions(shape, spacing))  # u(x) = A x, in mm
    det = jacobian_determinant(torch.as_tensor(field[None], device=device), spacing)
    np.testing.assert_allclose(det.cpu().numpy(), np.linalg.det(np.eye(3) + matrix), rtol=1e-12)


def test_a_smooth_random_field_matches_numpy_with_per_sample_spacing(device):
    fields = np.stack([_smooth_field(seed=s) for s in (0, 1)])
    spacing = np.array([[1.0, 1.0, 1.0], [0.7, 1.2, 2.5]])
    det = jacobian_determinant(torch.as_tensor(fields, device=device), torch.as_tensor(spacing))
    expected = np.stack([_np_determinant(f, s) for f, s in zip(fields, spacing)])
    assert expected.min() < 0.5 and expected.max() > 1.5  # a field far from the identity
    np.testing.assert_allclose(det.cpu().numpy(), expected, rtol=1e-10, atol=1e-12)
    single = jacobian_determinant(torch.as_tensor(fields[1:], device=device), spacing[1].tolist())
    np.testing.assert_allclose(single.cpu().numpy(), expected[1:], rtol=1e-10, atol=1e-12)


def test_anisotropic_spacing_agrees_with_the_same_field_in_voxels(device):
    spacing = (0.7, 1.2, 2.5)
    field_mm = _smooth_field(seed=3)
    field_voxels = field_mm / np.array(spacing)[:, None, None, None]
    in_mm = jacobian_determinant(torch.as_tensor(field_mm[None], device=device), spacing)
    in_voxels = jacobian_determinant(torch.as_tensor(field_voxels[None], device=device))
    torch.testing.assert_close(in_mm, in_voxels, rtol=1e-10, atol=1e-12)
    # ignoring the spacing is a different (wrong) answer
    assert (jacobian_determinant(torch.as_tensor(field_mm[None])) - in_mm.cpu()).abs().max() > 0.1


def test_a_batch_equals_its_samples_one_by_one(device):
    fields = torch.as_tensor(np.stack([_smooth_field(seed=s) for s in range(3)]), dtype=torch.float32, device=device)
    batch = jacobian_determinant(fields, (1.0, 2.0, 0.5))
    singles = torch.cat([jacobian_determinant(fields[i : i + 1], (1.0, 2.0, 0.5)) for i in range(3)])
    torch.testing.assert_close(batch, singles)


def test_short_and_single_voxel_axes():
    # two voxels along D: one-sided differences at both ends (as numpy.gradient)
    field = _smooth_field(shape=(2, 5, 4), seed=4)
    det = jacobian_determinant(torch.as_tensor(field[None]))
    np.testing.assert_allclose(det[0].numpy(), _np_determinant(field), rtol=1e-10)
    # one voxel along D: no derivative along it
    flat = torch.zeros(1, 3, 1, 6, 5, dtype=torch.float64)
    flat[:, 1] = 0.3 * torch.arange(6.0)[:, None]
    flat[:, 0] = torch.rand(1, 6, 5, dtype=torch.float64)  # u_D varies in H and W only: no volume change
    torch.testing.assert_close(jacobian_determinant(flat), torch.full((1, 1, 6, 5), 1.3, dtype=torch.float64))


def test_gradients_match_finite_differences():
    field = torch.as_tensor(_smooth_field(shape=(4, 5, 3), seed=5, amplitude=0.3)[None]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u: jacobian_determinant(u, (1.0, 0.5, 2.0)), (field,))


def test_folding_fraction_of_a_folding_field(device):
    shape = (20, 20, 20)
    grid = _positions(shape, (1.0, 1.0, 1.0)) - 9.5
    bump = np.exp(-(grid**2).sum(0) / (2 * 3.0**2))
    mask = (grid**2).sum(0) < 8.0**2
    for amplitude, folds in ((1.0, False), (8.0, True)):  # |d/dx| of the bump peaks at amplitude * 0.2
        field = np.zeros((3, *shape))
        field[0] = amplitude * bump
        expected = _np_determinant(field)
        det = jacobian_determinant(torch.as_tensor(field[None], device=device))
        fraction = folding_fraction(det)
        assert fraction.shape == (1,) and fraction.dtype == torch.float64
        assert fraction.item() == pytest.approx((expected <= 0).mean(), abs=1e-15)
        assert (fraction.item() > 0) == folds and fraction.item() < 0.1
        # an image mask [B, 1, D, H, W] or [B, D, H, W]
        for m in (torch.as_tensor(mask[None, None], device=device), torch.as_tensor(mask[None], device=device)):
            assert folding_fraction(det, m).item() == pytest.approx((expected[mask] <= 0).mean(), abs=1e-15)
    fraction = folding_fraction(torch.tensor([[2.0, 0.0, -1.0, 0.5], [1.0, 1.0, 1.0, -3.0]], device=device))
    assert fraction.dtype == torch.float32 and fraction.tolist() == [0.5, 0.25]
    assert torch.isnan(folding_fraction(det, torch.zeros(shape, dtype=torch.bool, device=device))).all()


def test_no_host_synchronisation(forbid_host_sync, device):
    field = torch.zeros(1, 3, 6, 6, 6, device=device)
    forbid_host_sync()
    folding_fraction(jacobian_determinant(field, (1.0, 2.0, 3.0)), torch.ones(1, 1, 6, 6, 6, device=device))


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match=r"\[B, 3, D, H, W\]"):
        jacobian_determinant(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(TypeError, match="floating"):
        jacobian_determinant(torch.zeros(1, 3, 4, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="positive"):
        jacobian_determinant(torch.zeros(1, 3, 4, 4, 4), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        jacobian_determinant(torch.zeros(2, 3, 4, 4, 4), torch.ones(3, 3))
    with pytest.raises(ValueError, match="broadcast"):
        folding_fraction(torch.zeros(1, 4, 4, 4), torch.ones(1, 4, 4, 5))
    with pytest.raises(ValueError, match="batch"):
        folding_fraction(torch.zeros(4))
