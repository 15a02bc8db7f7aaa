"""The one-pass intensity chain against the torch path (the random intensity transforms' own functions)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from gpuprep.functional import intensity_chain
from gpuprep.functional.augment_intensity import (
    adjust_contrast,
    apply_noise,
    bias_field,
    bias_field_terms,
    draw_noise,
    signed_power,
)
from gpuprep.functional.intensity_chain import (
    VoxelStep,
    apply_voxel_chain,
    chain_backend,
    draw_step_noise,
    voxel_chain_torch,
)


def _random_chain(rng: np.random.Generator, batch: int, with_contrast: bool) -> list[VoxelStep]:
    """Every kind of step once or twice, in a random order, each applied to a random subset of samples."""
    kinds = ["bias", "gamma", "shift", "noise", "rician", "bias", "gamma"]
    rng.shuffle(kinds)
    kinds = (["contrast"] if with_contrast else []) + kinds
    steps = []
    for kind in kinds:
        applied = list(rng.random(batch) < 0.8)
        if kind == "bias":
            order = int(rng.integers(0, 4))
            coefficients = rng.uniform(-0.5, 0.5, (batch, len(bias_field_terms(order))))
            steps.append(VoxelStep(kind, applied, np.zeros((batch, 0)), coefficients, order))
        elif kind == "gamma":
            steps.append(VoxelStep(kind, applied, rng.uniform(0.6, 1.5, (batch, 1))))
        elif kind == "shift":
            steps.append(VoxelStep(kind, applied, rng.uniform(-0.3, 0.3, (batch, 1))))
        elif kind in ("noise", "rician"):
            numbers = np.column_stack([rng.uniform(-0.1, 0.1, batch), rng.uniform(0, 0.2, batch)])
            steps.append(VoxelStep(kind, applied, numbers, noise_seeds=list(rng.integers(0, 2**62, batch))))
        else:
            numbers = np.column_stack([rng.uniform(0.7, 1.3, batch), np.full(batch, float(rng.random() < 0.5))])
            steps.append(VoxelStep(kind, applied, numbers))
    return steps


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal to float32 rounding: 1e-5 relative to the magnitude (at least 1)."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
    assert torch.equal(ours[torch.isinf(theirs)], theirs[torch.isinf(theirs)])
    finite = torch.isfinite(theirs)
    scale = theirs[finite].abs().clamp_min(1)
    assert ((ours[finite] - theirs[finite]).abs() / scale).max() <= 1e-5


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batch", [1, 3])
def test_kernel_equals_the_torch_path(seed, batch):
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    volume = torch.from_numpy(rng.normal(1.0, 0.8, (batch, 2, 5, 7, 9))).float()
    steps = _random_chain(rng, batch, with_contrast=seed % 2 == 0)
    assert chain_backend(volume, steps) == "numba"
    _assert_close(apply_voxel_chain(volume, steps), voxel_chain_torch(volume, steps))


def test_the_torch_path_is_the_transforms_functions():
    """Each step is the function a random intensity transform calls, on the samples it applies to."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(0.1, 2.0, (2, 1, 4, 5, 6))).float()
    coefficients = rng.uniform(-0.5, 0.5, (2, 10))
    steps = [VoxelStep("bias", [True, True], np.zeros((2, 0)), coefficients, 2),
             VoxelStep("gamma", [False, True], np.array([[9.0], [1.4]])),
             VoxelStep("noise", [True, True], np.array([[0.0, 0.1], [0.0, 0.2]]), noise_seeds=[5, 6]),
             VoxelStep("contrast", [True, True], np.array([[1.2, 1.0], [0.8, 1.0]]))]
    expected = x * bias_field(x.shape[2:], torch.tensor(coefficients, dtype=torch.float32), 2)
    expected = torch.cat([expected[:1], signed_power(expected[1:], [1.4])])
    expected = apply_noise(expected, draw_noise(expected, [5, 6]), [0.0, 0.0], [0.1, 0.2])
    expected = adjust_contrast(expected, [1.2, 0.8], preserve_range=True)
    assert torch.equal(voxel_chain_torch(x, steps), expected)


def test_noise_is_the_generators_whatever_the_batch():
    x = torch.zeros(3, 2, 4, 4, 4)
    steps = [VoxelStep("rician", [True, False, True], np.zeros((3, 2)), noise_seeds=[7, 8, 9])]
    noise, slots = draw_step_noise(x, steps)
    assert slots.tolist() == [0] and noise.shape == (3, 2, 2, 4, 4, 4)
    assert torch.equal(noise[2], draw_noise(x[:1], [9], count=2)[:, 0])


def test_non_finite_values_and_signs_follow_torch():
    pytest.importorskip("numba")
    x = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), -2.0, 1e-30, 3e4]).reshape(1, 1, 1, 1, 8)
    for steps in ([VoxelStep("gamma", [True], np.array([[0.7]]))],
                  [VoxelStep("bias", [True], np.zeros((1, 0)), np.full((1, 4), 0.3), 1),
                   VoxelStep("gamma", [True], np.array([[1.3]]))],
                  [VoxelStep("bias", [True], np.zeros((1, 0)), np.full((1, 4), -0.3), 1)]):
        ours, theirs = apply_voxel_chain(x, steps), voxel_chain_torch(x, steps)
        _assert_close(ours, theirs)


def test_without_numba_and_off_the_kernels_dtype_the_torch_path_runs(monkeypatch):
    rng = np.random.default_rng(3)
    volume = torch.from_numpy(rng.normal(1.0, 0.5, (2, 1, 4, 5, 6))).float()
    steps = _random_chain(rng, 2, with_contrast=False)
    assert chain_backend(volume.double(), steps) == "torch"
    assert chain_backend(volume, [*steps[::-1], VoxelStep("contrast", [True, True], np.ones((2, 2)))]) == "torch"
    assert torch.equal(apply_voxel_chain(volume.double(), steps), voxel_chain_torch(volume.double(), steps))
    monkeypatch.setitem(sys.modules, "gpuprep.functional.intensity_chain_kernels", None)
    intensity_chain._kernels.cache_clear()
    try:
        assert chain_backend(volume, steps) == "torch"
        assert torch.equal(apply_voxel_chain(volume, steps), voxel_chain_torch(volume, steps))
    finally:
        intensity_chain._kernels.cache_clear()


def test_an_empty_chain_copies_and_bad_steps_are_refused():
    x = torch.ones(2, 1, 2, 2, 2)
    out = apply_voxel_chain(x, [])
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    with pytest.raises(ValueError, match="kind must be one of"):
        VoxelStep("blur", [True], np.zeros((1, 1)))
    with pytest.raises(ValueError, match="coefficients"):
        VoxelStep("bias", [True], np.zeros((1, 0)))
    with pytest.raises(ValueError, match="noise_seeds"):
        VoxelStep("noise", [True], np.zeros((1, 2)))
    with pytest.raises(ValueError, match="1 samples for a batch of 2"):
        apply_voxel_chain(x, [VoxelStep("shift", [True], np.zeros((1, 1)))])


@pytest.mark.parametrize("kinds", [("bias", "gamma", "noise"), ("gamma",), ("noise", "shift", "noise")])
def test_chains_with_one_noise_volume_or_none(kinds):
    """The output then takes the noise buffer's place; the input is never written."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(7)
    volume = torch.from_numpy(rng.uniform(0.1, 2.0, (2, 2, 6, 5, 9))).float()
    before = volume.clone()
    steps = [step for step in _random_chain(rng, 2, with_contrast=False) if step.kind in kinds]
    ours = apply_voxel_chain(volume, steps)
    _assert_close(ours, voxel_chain_torch(volume, steps))
    assert torch.equal(volume, before) and ours.is_contiguous() and ours.shape == volume.shape
