"""Warping, composition and scaling-and-squaring against scipy.ndimage.map_coordinates, expm and the flow's algebra."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from scipy.ndimage import gaussian_filter, map_coordinates

from gpuprep.errors import ConfigError
from gpuprep.functional.jacobian import folding_fraction, jacobian_determinant
from gpuprep.functional.velocity_field import (
    compose_displacements,
    gaussian_smooth_field,
    identity_grid,
    integrate_velocity,
    warp_volume,
)


def _smooth_field(shape, seed, sigma, amplitude) -> np.ndarray:
    """A random smooth field [3, D, H, W] whose largest component value is ``amplitude`` voxels."""
    rng = np.random.default_rng(seed)
    field = np.stack([gaussian_filter(rng.normal(size=shape), sigma) for _ in range(3)])
    return amplitude * field / np.abs(field).max()


def _np_warp(volume: np.ndarray, field: np.ndarray, order: int, mode: str) -> np.ndarray:
    """volume [C, D, H, W] read at x + u(x) by scipy.ndimage.map_coordinates."""
    positions = np.indices(field.shape[1:]) + field
    return np.stack([map_coordinates(channel, positions, order=order, mode=mode) for channel in volume])


def _np_compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """w(x) = inner(x) + outer(x + inner(x)), outer read trilinearly and clamped at the border."""
    return inner + _np_warp(outer, inner, order=1, mode="nearest")


def _np_exp(velocity: np.ndarray, steps: int) -> np.ndarray:
    u = velocity / 2.0**steps
    for _ in range(steps):
        u = _np_compose(u, u)
    return u


def test_identity_grid_is_the_voxel_index():
    grid = identity_grid((3, 4, 5), dtype=torch.float64)
    assert grid.shape == (1, 3, 3, 4, 5) and grid.dtype == torch.float64
    np.testing.assert_array_equal(grid[0].numpy(), np.indices((3, 4, 5)))


@pytest.mark.parametrize(("padding_mode", "scipy_mode"), [("zeros", "grid-constant"), ("border", "nearest")])
def test_linear_warp_matches_map_coordinates(padding_mode, scipy_mode, device):
    rng = np.random.default_rng(0)
    shape = (7, 9, 8)
    volumes = rng.normal(size=(2, 2, *shape))
    fields = rng.uniform(-3.0, 3.0, size=(2, 3, *shape))  # a rough field: many points leave the grid
    out = warp_volume(torch.as_tensor(volumes, device=device), torch.as_tensor(fields, device=device),
                      padding_mode=padding_mode)
    expected = np.stack([_np_warp(v, f, order=1, mode=scipy_mode) for v, f in zip(volumes, fields)])
    np.testing.assert_allclose(out.cpu().numpy(), expected, atol=1e-10)


@pytest.mark.parametrize(("padding_mode", "scipy_mode"), [("zeros", "grid-constant"), ("border", "nearest")])
def test_nearest_warp_of_labels_matches_map_coordinates_and_keeps_the_dtype(padding_mode, scipy_mode):
    rng = np.random.default_rng(1)
    shape = (6, 7, 8)
    labels = rng.integers(0, 1000, size=(1, 1, *shape))
    # whole voxels plus at most 0.4: no position is near a rounding tie
    fields = rng.integers(-3, 4, size=(1, 3, *shape)) + rng.uniform(-0.4, 0.4, size=(1, 3, *shape))
    out = warp_volume(torch.as_tensor(labels), torch.as_tensor(fields), mode="nearest", padding_mode=padding_mode)
    assert out.dtype == torch.int64
    np.testing.assert_array_equal(out[0].numpy(), _np_warp(labels[0], fields[0], order=0, mode=scipy_mode))


def test_warp_by_zero_is_the_identity_and_a_whole_voxel_shift_moves_the_volume(device):
    volume = torch.rand(1, 2, 5, 6, 7, device=device)
    torch.testing.assert_close(warp_volume(volume, torch.zeros(1, 3, 5, 6, 7, device=device)), volume)
    shift = torch.zeros(1, 3, 5, 6, 7, device=device)
    shift[:, 2] = 2.0  # read two voxels further along W
    out = warp_volume(volume, shift)
    torch.testing.assert_close(out[..., :-2], volume[..., 2:])
    assert bool((out[..., -2:] == 0).all())


def test_compose_matches_a_numpy_composition(device):
    outer, inner = _smooth_field((9, 8, 10), 2, 1.5, 3.0), _smooth_field((9, 8, 10), 3, 1.5, 3.0)
    out = compose_displacements(*(torch.as_tensor(f[None], device=device) for f in (outer, inner)))
    np.testing.assert_allclose(out[0].cpu().numpy(), _np_compose(outer, inner), atol=1e-10)


def test_compose_applies_inner_first():
    # outer(x) = A x (linear), inner(x) = c (a translation): phi_outer(phi_inner(x)) = x + c + A (x + c)
    shape = (12, 12, 12)
    matrix = np.random.default_rng(4).uniform(-0.2, 0.2, size=(3, 3))
    shift = np.array([1.0, -0.5, 0.75])
    x = np.indices(shape).astype(np.float64)
    outer = np.einsum("kj,j...->k...", matrix, x)
    inner = np.broadcast_to(shift[:, None, None, None], (3, *shape)).copy()
    out = compose_displacements(torch.as_tensor(outer[None]), torch.as_tensor(inner[None]))[0].numpy()
    expected = inner + np.einsum("kj,j...->k...", matrix, x + inner)
    np.testing.assert_allclose(out[:, 1:-1, 1:-1, 1:-1], expected[:, 1:-1, 1:-1, 1:-1], atol=1e-12)
    swapped = compose_displacements(torch.as_tensor(inner[None]), torch.as_tensor(outer[None]))[0].numpy()
    assert np.abs(swapped - expected)[:, 1:-1, 1:-1, 1:-1].max() > 0.1  # the order matters


def test_warping_by_a_composition_is_warping_twice():
    shape = (16, 16, 16)
    volume = torch.as_tensor(gaussian_filter(np.random.default_rng(5).normal(size=shape), 3.0)[None, None])
    outer = torch.as_tensor(_smooth_field(shape, 6, 4.0, 2.0)[None])
    inner = torch.as_tensor(_smooth_field(shape, 7, 4.0, 2.0)[None])
    once = warp_volume(volume, compose_displacements(outer, inner), padding_mode="border")
    twice = warp_volume(warp_volume(volume, outer, padding_mode="border"), inner, padding_mode="border")
    inside = (slice(None), slice(None), *[slice(4, -4)] * 3)
    assert (once - twice)[inside].abs().max() < 0.02 * volume.abs().max()


def test_zero_and_constant_velocities(device):
    zero = torch.zeros(2, 3, 6, 5, 4, device=device)
    assert bool((integrate_velocity(zero) == 0).all())
    constant = torch.tensor([1.5, -2.25, 0.8], device=device).view(1, 3, 1, 1, 1).expand(2, 3, 6, 5, 4)
    for steps in (0, 4, 7):
        torch.testing.assert_close(integrate_velocity(constant, steps), constant, rtol=0, atol=1e-6)
        torch.testing.assert_close(integrate_velocity(constant, steps, inverse=True), -constant, rtol=0, atol=1e-6)


def test_scaling_and_squaring_matches_a_numpy_implementation(device):
    velocity = _smooth_field((10, 11, 9), 8, 2.0, 3.0)
    out = integrate_velocity(torch.as_tensor(velocity[None], device=device), steps=6)
    np.testing.assert_allclose(out[0].cpu().numpy(), _np_exp(velocity, 6), atol=1e-9)


def test_a_linear_velocity_integrates_to_the_matrix_power_close_to_the_exponential():
    # v(x) = A (x - c): trilinear interpolation is exact for a linear field, so 2**s squarings of
    # x -> x + A (x - c) / 2**s give exactly (I + A / 2**s)**(2**s), which tends to expm(A)
    shape, steps = (17, 17, 17), 8
    rng = np.random.default_rng(9)
    matrix = rng.uniform(-0.08, 0.08, size=(3, 3)) + np.array([[0, -0.1, 0], [0.1, 0, 0], [0, 0, 0]])  # with a rotation
    centred = np.indices(shape) - 8.0
    velocity = np.einsum("kj,j...->k...", matrix, centred)
    out = integrate_velocity(torch.as_tensor(velocity[None]), steps=steps)[0].numpy()
    power = np.linalg.matrix_power(np.eye(3) + matrix / 2**steps, 2**steps)
    inside = (slice(None), *[slice(5, -5)] * 3)  # away from the border, where clamping changes the field
    np.testing.assert_allclose(out[inside], np.einsum("kj,j...->k...", power - np.eye(3), centred)[inside], atol=1e-10)
    flow = np.einsum("kj,j...->k...", expm(matrix) - np.eye(3), centred)
    assert np.abs(out - flow)[inside].max() < 1e-3 * np.abs(flow[inside]).max()


def test_a_small_velocity_is_its_own_exponential_to_first_order():
    # exp(v) = v + (Dv) v / 2 + O(|v|**3); (Dv) v / 2 by numpy.gradient, on a smooth field so that
    # the one-sided derivatives of trilinear interpolation are close to it
    field = _smooth_field((32, 32, 32), 10, 6.0, 1.0)
    second = 0.5 * np.einsum("kj...,j...->k...", np.stack([np.stack(np.gradient(c)) for c in field]), field)
    inside = (slice(None), *[slice(6, -6)] * 3)
    velocity = torch.as_tensor(field[None])
    errors = []
    for eps in (0.4, 0.2, 0.1):
        error = (integrate_velocity(eps * velocity) - eps * velocity)[0].numpy()
        errors.append(np.abs(error).mean())
        assert np.linalg.norm((error / eps**2 - second)[inside]) < 0.2 * np.linalg.norm(second[inside])
    for bigger, smaller in itertools.pairwise(errors):
        assert 3.5 < bigger / smaller < 4.5  # O(|v|**2): halving v quarters the error


def test_the_exponential_of_minus_v_inverts_the_exponential_of_v():
    velocity = torch.as_tensor(_smooth_field((24, 24, 24), 2, 6.0, 3.0)[None])
    forward, backward = integrate_velocity(velocity), integrate_velocity(velocity, inverse=True)
    inside = (slice(None), slice(None), *[slice(5, -5)] * 3)
    magnitude = forward[inside].norm(dim=1).mean()
    for residual in (compose_displacements(forward, backward), compose_displacements(backward, forward)):
        assert residual[inside].norm(dim=1).mean() < 0.01 * magnitude
    naive = compose_displacements(forward, -forward)  # negating the displacement is a far worse inverse
    assert naive[inside].norm(dim=1).mean() > 3 * compose_displacements(forward, backward)[inside].norm(dim=1).mean()


def test_a_large_velocity_integrates_to_a_map_that_does_not_fold():
    velocity = torch.as_tensor(_smooth_field((24, 24, 24), 0, 1.5, 4.0)[None])
    assert float(folding_fraction(jacobian_determinant(velocity))[0]) > 0.001  # v used as a displacement folds
    assert float(jacobian_determinant(integrate_velocity(velocity)).min()) > 0


def test_a_batch_equals_its_samples_one_by_one(device):
    velocity = torch.as_tensor(np.stack([_smooth_field((8, 9, 7), s, 1.5, 2.0) for s in range(3)]),
                               dtype=torch.float32, device=device)
    batch = integrate_velocity(velocity, steps=5)
    singles = torch.cat([integrate_velocity(velocity[i : i + 1], steps=5) for i in range(3)])
    torch.testing.assert_close(batch, singles)
    volume = torch.rand(1, 2, 8, 9, 7, device=device)  # one template against three fields
    warped = warp_volume(volume, batch)
    torch.testing.assert_close(warped, torch.cat([warp_volume(volume, batch[i : i + 1]) for i in range(3)]))


def test_gradients_flow():
    torch.manual_seed(0)
    velocity = (0.6 * torch.randn(1, 3, 3, 4, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: integrate_velocity(v, steps=3), (velocity,))
    volume = torch.randn(1, 2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(warp_volume, (volume, velocity))
    other = (0.6 * torch.randn(1, 3, 3, 4, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(compose_displacements, (velocity, other))


def test_gaussian_smoothing_is_scipy_per_component():
    field = np.random.default_rng(11).normal(size=(2, 3, 8, 7, 9))
    out = gaussian_smooth_field(torch.as_tensor(field), (1.0, 1.5, 0.7)).numpy()
    expected = np.stack([[gaussian_filter(c, (1.0, 1.5, 0.7), mode="nearest") for c in f] for f in field])
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_no_host_synchronisation(forbid_host_sync, device):
    velocity = torch.rand(2, 3, 6, 6, 6, device=device)
    volume = torch.rand(2, 1, 6, 6, 6, device=device)
    forbid_host_sync()
    warp_volume(volume, integrate_velocity(velocity, inverse=True), mode="nearest")
    gaussian_smooth_field(velocity, 1.0)


def test_bad_arguments():
    field = torch.zeros(1, 3, 4, 4, 4)
    with pytest.raises(ValueError, match="velocity must be"):
        integrate_velocity(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(TypeError, match="floating point"):
        integrate_velocity(torch.zeros(1, 3, 4, 4, 4, dtype=torch.int32))
    with pytest.raises(ConfigError, match="steps"):
        integrate_velocity(field, steps=-1)
    with pytest.raises(ValueError, match="mode"):
        warp_volume(torch.zeros(1, 1, 4, 4, 4), field, mode="cubic")
    with pytest.raises(ValueError, match="padding_mode"):
        warp_volume(torch.zeros(1, 1, 4, 4, 4), field, padding_mode="reflection")
    with pytest.raises(TypeError, match="nearest"):
        warp_volume(torch.zeros(1, 1, 4, 4, 4, dtype=torch.int64), field)
    with pytest.raises(ValueError, match="field's grid"):
        warp_volume(torch.zeros(1, 1, 4, 4, 5), field)
    with pytest.raises(ValueError, match="batch sizes"):
        warp_volume(torch.zeros(2, 1, 4, 4, 4), torch.zeros(3, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="share the grid"):
        compose_displacements(field, torch.zeros(1, 3, 4, 4, 5))
