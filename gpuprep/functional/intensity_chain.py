"""A chain of voxel-wise intensity steps (bias field, gamma, shift, noise, contrast) in one pass.

:class:`VoxelStep` describes one step with its per-sample parameters; :func:`apply_voxel_chain`
applies a list of them to a batch ``[B, C, D, H, W]``:

- on the CPU with numba (the ``fast`` extra), for a float32 batch without autograd: the kernel
  of :mod:`gpuprep.functional.intensity_chain_kernels` reads each voxel once, applies every step
  in float64 and writes the result once (the bias polynomial is evaluated at the voxel, no field
  volume is made);
- anywhere else: :func:`voxel_chain_torch`, one tensor per step with the functions of
  :mod:`gpuprep.functional.augment_intensity`, which is what the random intensity transforms
  compute one by one. The two agree to float32 rounding (checked to ``1e-5`` relative).

Noise is drawn the same way on both paths, by :func:`draw_step_noise` (torch's generator, one
per sample, seeded as the transforms record), so that a sample's noise is bit-identical.

Example
-------
>>> import numpy as np, torch
>>> x = torch.full((2, 1, 3, 3, 3), 4.0)
>>> gamma = VoxelStep("gamma", [True, False], np.array([[0.5], [2.0]]))
>>> shift = VoxelStep("shift", [True, True], np.array([[1.0], [1.0]]))
>>> apply_voxel_chain(x, [gamma, shift])[:, 0, 0, 0, 0].tolist()
[3.0, 5.0]
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from .augment_intensity import (
    adjust_contrast,
    apply_noise,
    bias_field,
    bias_field_coordinates,
    bias_field_terms,
    fill_standard_normal,
    signed_power,
)
from .numba_threads import pick_kernel

__all__ = ["KINDS", "VoxelStep", "apply_voxel_chain", "chain_backend", "draw_step_noise", "voxel_chain_torch"]

#: The kinds of step, and the per-sample numbers each takes (columns of ``VoxelStep.numbers``).
KINDS = {
    "bias": ("coefficients, in VoxelStep.coefficients",),
    "gamma": ("gamma",),
    "shift": ("shift",),
    "noise": ("mean", "std"),
    "rician": ("mean", "std"),
    "contrast": ("factor", "preserve_range (0 or 1)"),
}
_NOISE_VOLUMES = {"noise": 1, "rician": 2}


@dataclass(frozen=True)
class VoxelStep:
    """One voxel-wise step of a chain, with its parameters for each sample of the batch.

    Parameters
    ----------
    kind:
        One of :data:`KINDS`.
    applied:
        ``B`` booleans: the samples this step changes (the others pass through it).
    numbers:
        ``[B, n]`` float64, the numbers :data:`KINDS` names (rows of samples not applied are ignored).
    coefficients:
        ``"bias"``: ``[B, n_terms]`` polynomial coefficients of
        :func:`~gpuprep.functional.augment_intensity.bias_field`.
    order:
        ``"bias"``: the polynomial's order.
    noise_seeds:
        ``"noise"``/``"rician"``: one seed per sample (see :func:`draw_step_noise`).
    """

    kind: str
    applied: Sequence[bool]
    numbers: np.ndarray
    coefficients: np.ndarray | None = None
    order: int = 0
    noise_seeds: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"VoxelStep: kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        if self.kind == "bias" and self.coefficients is None:
            raise ValueError("VoxelStep: a 'bias' step needs its coefficients")
        if self.kind in _NOISE_VOLUMES and self.noise_seeds is None:
            raise ValueError(f"VoxelStep: a {self.kind!r} step needs noise_seeds")


@functools.lru_cache(maxsize=1)
def _kernels() -> ModuleType | None:
    try:
        return importlib.import_module(f"{__package__}.intensity_chain_kernels")
    except ImportError:
        return None


def chain_backend(volume: torch.Tensor, steps: Sequence[VoxelStep]) -> str:
    """``"numba"`` where the one-pass kernel can apply ``steps`` to ``volume``, else ``"torch"``.

    The kernel needs a float32 CPU tensor without autograd, numba, and a contrast step (which
    needs the mean of its input) only first in the chain.

    Example
    -------
    >>> chain_backend(torch.zeros(1, 1, 2, 2, 2, dtype=torch.float64), [])
    'torch'
    """
    usable = (type(volume) is torch.Tensor and volume.device.type == "cpu" and volume.dtype == torch.float32
              and not volume.requires_grad and all(s.kind != "contrast" for s in steps[1:]))
    return "numba" if usable and _kernels() is not None else "torch"


def draw_step_noise(volume: torch.Tensor, steps: Sequence[VoxelStep]) -> tuple[torch.Tensor, np.ndarray]:
    """Standard normal noise ``[B, slots, C, D, H, W]`` for the noise steps, and each step's first slot.

    Sample ``b`` of a step gets ``count`` volumes (1 Gaussian, 2 Rician) from one ``normal_``
    of ``torch.Generator(device).manual_seed(noise_seeds[b])``, as
    :func:`~gpuprep.functional.augment_intensity.draw_noise` draws them, so they are the same
    whatever the batch or path. Samples a step does not apply to draw nothing.
    """
    slots, total = np.zeros(len(steps), np.int64), 0
    for index, step in enumerate(steps):
        slots[index], total = total, total + _NOISE_VOLUMES.get(step.kind, 0)
    dtype = torch.float64 if volume.dtype == torch.float64 else torch.float32  # as draw_noise
    noise = torch.empty((volume.shape[0], max(total, 1), *volume.shape[1:]), device=volume.device, dtype=dtype)
    jobs = [(noise[b, slots[index]: slots[index] + _NOISE_VOLUMES[step.kind]], int(step.noise_seeds[b]))  # type: ignore[index]
            for index, step in enumerate(steps) if step.kind in _NOISE_VOLUMES
            for b, applied in enumerate(step.applied) if applied]
    fill_standard_normal(jobs)
    return noise, slots


def apply_voxel_chain(volume: torch.Tensor, steps: Sequence[VoxelStep]) -> torch.Tensor:
    """Apply ``steps`` in order to the float batch ``volume`` ``[B, C, D, H, W]``; a new tensor of its dtype.

    Parameters
    ----------
    volume:
        Floating-point intensities.
    steps:
        The chain; every step has ``B`` entries in ``applied``.
    """
    if not steps:
        return volume.clone()
    for step in steps:
        if len(step.applied) != volume.shape[0]:
            raise ValueError(f"apply_voxel_chain: a {step.kind!r} step has {len(step.applied)} samples for a "
                             f"batch of {volume.shape[0]}")
    if chain_backend(volume, steps) == "torch":
        return voxel_chain_torch(volume, steps)
    return _numba_chain(volume.contiguous(), steps)


def _numba_chain(volume: torch.Tensor, steps: Sequence[VoxelStep]) -> torch.Tensor:
    batch, channels = volume.shape[:2]
    codes = np.array([_kernels().CODES[s.kind] for s in steps], np.int64)  # type: ignore[union-attr]
    applied = np.array([[bool(s.applied[b]) for s in steps] for b in range(batch)], np.uint8)
    numbers = np.zeros((batch, len(steps), 4))
    for k, step in enumerate(steps):
        if step.kind != "bias":
            numbers[:, k, : step.numbers.shape[1]] = step.numbers
    cubes = _coefficient_cubes(steps, batch)
    axes = [bias_field_coordinates(int(n), dtype=torch.float64).numpy() for n in volume.shape[2:]]
    axes[2] = axes[2].astype(np.float32)  # the kernel evaluates the polynomial along rows in float32
    noise, slots = draw_step_noise(volume, steps)
    stats = np.zeros((batch, channels, 3))
    if steps[0].kind == "contrast":
        stats[:, :, 0] = volume.mean(dim=(2, 3, 4)).double().numpy()  # as adjust_contrast: a float32 mean
        stats[:, :, 1] = volume.amin(dim=(2, 3, 4)).double().numpy()
        stats[:, :, 2] = volume.amax(dim=(2, 3, 4)).double().numpy()
    # With one noise volume (or none) the output takes its place: the kernel reads each row's noise
    # before it writes that row, and the fresh buffer is not allocated (and page-faulted) twice.
    out = noise[:, 0] if noise.shape[1] == 1 else torch.empty_like(volume)
    pick_kernel(_kernels(), "voxel_chain")(np.from_dlpack(volume), codes, applied, numbers, cubes, *axes,
                                           np.from_dlpack(noise), slots, stats, np.from_dlpack(out))
    return out


def _coefficient_cubes(steps: Sequence[VoxelStep], batch: int) -> np.ndarray:
    """``[B, steps, S, S, S]``: each bias step's coefficients at their ``(i, j, k)`` exponents."""
    size = 1 + max([s.order for s in steps if s.kind == "bias"], default=0)
    cubes = np.zeros((batch, len(steps), size, size, size))
    for k, step in enumerate(steps):
        if step.kind == "bias":
            for term, (i, j, m) in enumerate(bias_field_terms(step.order)):
                cubes[:, k, i, j, m] = np.asarray(step.coefficients, dtype=np.float64)[:, term]
    return cubes


def voxel_chain_torch(volume: torch.Tensor, steps: Sequence[VoxelStep]) -> torch.Tensor:
    """The chain one step at a time in torch, each step on the samples it applies to.

    Example
    -------
    >>> x = torch.full((1, 1, 2, 2, 2), 9.0)
    >>> voxel_chain_torch(x, [VoxelStep("gamma", [True], np.array([[0.5]]))]).unique().tolist()
    [3.0]
    """
    noise, slots = draw_step_noise(volume, steps)
    out = volume
    for step, slot in zip(steps, slots):
        chosen = [b for b, applied in enumerate(step.applied) if applied]
        if not chosen:
            continue
        index = torch.tensor(chosen, device=volume.device)
        changed = _torch_step(step, out.index_select(0, index), noise[index, slot:], chosen)
        out = changed if len(chosen) == len(step.applied) else out.index_copy(0, index, changed)
    return out if out is not volume else volume.clone()


def _torch_step(step: VoxelStep, x: torch.Tensor, noise: torch.Tensor, chosen: list[int]) -> torch.Tensor:
    numbers = step.numbers[chosen]
    if step.kind == "bias":
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        coefficients = torch.as_tensor(np.asarray(step.coefficients)[chosen], dtype=dtype).to(x.device)
        return (x.to(dtype) * bias_field(x.shape[2:], coefficients, step.order, dtype)).to(x.dtype)
    if step.kind == "gamma":
        return signed_power(x, numbers[:, 0].tolist())
    if step.kind == "shift":
        return x + torch.tensor(numbers[:, 0].tolist(), dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1, 1)
    if step.kind in _NOISE_VOLUMES:
        return apply_noise(x, noise.transpose(0, 1), numbers[:, 0].tolist(), numbers[:, 1].tolist(), _KIND[step.kind])
    return adjust_contrast(x, numbers[:, 0].tolist(), bool(numbers[0, 1]))


_KIND = {"noise": "gaussian", "rician": "rician"}
