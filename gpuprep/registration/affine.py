"""Rigid and affine registration: a coarse-to-fine gradient descent on world-space parameters, batched.

For every pair of a batch, the transform ``y = L (x - c) + c + t`` maps fixed-world points to
moving-world points (RAS mm), about the fixed image's centre of mass ``c``. Each pyramid level
samples a fixed set of random points of the fixed image (off the voxel centres), maps them
through the transform, reads the moving image there trilinearly and scores the pair with the
metric; Adam moves the parameters. The parameters are scaled so that one unit is about one
millimetre of motion at the brain's periphery (rotations and linear terms are multiplied by a
radius of 50 mm), so one learning rate fits them all. Each pair has its own parameters; their
losses are summed, so their gradients, and Adam's per-parameter steps, stay independent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..functional.mattes_points import FixedBins, fixed_bins, point_mutual_information
from ..functional.pyramid import gaussian_pyramid
from ..functional.similarity import mean_squared_error, normalized_cross_correlation
from ..functional.transform_models import (
    center_of_mass,
    compose_matrices,
    map_points,
    rotation_from_vector,
    sample_voxels_fast,
    with_world_gradient,
    world_matrix,
)
from .sampling import inside_moving, sample_fixed_points

__all__ = ["METRICS", "MODELS", "AffineSettings", "register_affine"]

MODELS = ("rigid", "affine")
METRICS = ("mi", "ncc", "mse")
PARAMETERS = {"rigid": 6, "affine": 12}
RADIUS_MM = 50.0  # rotation and linear parameters are scaled by it: a unit is ~1 mm at the periphery
VOXEL_UNITS = torch.eye(4, dtype=torch.float64)[None]  # the affine under which the gradient stack is per voxel


@dataclass(frozen=True)
class AffineSettings:
    """Settings of :func:`register_affine`.

    ``iterations`` is one count per level, coarsest first; ``points`` the number of fixed points
    sampled per level (one number, or one per level); ``learning_rate`` the first level's Adam
    step in (scaled) millimetres, halved at each finer level and decayed to 2 % within each level.
    An affine registration fits a rigid transform on its first ``rigid_levels`` levels, as ANTs'
    and FSL's rigid-then-affine stages do: on a coarse level, a scan that covers a small part of
    the fixed image can raise mutual information by shrinking into itself (measured on nibabel's
    cropped ``anatomical.nii`` against MNI, with a mask or from centres of mass).
    """

    model: str = "affine"
    metric: str = "mi"
    levels: int = 3
    iterations: Sequence[int] = (60, 40, 40)
    points: int | Sequence[int] = 20_000
    learning_rate: float = 2.0
    bins: int = 32
    seed: int = 0
    init: str = "center_of_mass"
    rigid_levels: int = 1

    def model_at(self, level: int) -> str:
        """The model fitted at ``level``: rigid on the first ``rigid_levels`` levels of an affine registration."""
        return "rigid" if self.model == "rigid" or level < self.rigid_levels else "affine"

    def points_at(self, level: int) -> int:
        """The number of points sampled at ``level`` (one number for all levels, or one per level)."""
        return self.points if isinstance(self.points, int) else self.points[level]


@dataclass
class AffineOutcome:
    """The world matrices ``[B, 4, 4]`` (float64, fixed world to moving world) and the metric per iteration."""

    matrix: torch.Tensor
    metric: list[list[float]] = field(default_factory=list)


def register_affine(fixed: torch.Tensor, fixed_affine: np.ndarray, moving: torch.Tensor, moving_affine: np.ndarray,
                    settings: AffineSettings = AffineSettings(), fixed_mask: torch.Tensor | None = None,
                    initial: torch.Tensor | None = None,
                    progress: Callable[[int], None] | None = None) -> AffineOutcome:
    """Register ``moving`` to ``fixed`` (both ``[B, 1, D, H, W]``, affines ``[B, 4, 4]`` or one ``[4, 4]``).

    ``fixed_mask`` (same grid as ``fixed``) restricts the sampled voxels. ``initial`` ``[B, 4, 4]``
    replaces the centre-of-mass start. ``progress(level)`` is called after every iteration.
    Returns the matrices and, per level, the metric of every iteration (the mean over the batch).
    """
    batch, device = fixed.shape[0], fixed.device
    fixed_affines = _per_sample(fixed_affine, batch)
    moving_affines = _per_sample(moving_affine, batch)
    fixed_levels = _pyramids(fixed, fixed_affines, settings.levels)
    moving_levels = _pyramids(moving, moving_affines, settings.levels)
    mask_levels = _pyramids(fixed_mask.float(), fixed_affines, settings.levels) if fixed_mask is not None else None
    center = _center(fixed_levels, mask_levels)
    linear0, shift0 = _start(moving_levels, center, settings.init, initial)
    model = settings.model_at(0)
    params = torch.zeros(batch, PARAMETERS[model], dtype=torch.float64, device=device, requires_grad=True)
    history = []
    for level in range(settings.levels):
        moving_volume, moving_affine_level = moving_levels[level]
        to_voxel = torch.from_numpy(np.linalg.inv(moving_affine_level)).to(device)
        with torch.no_grad():
            current = _matrix(params, model, linear0, shift0, center)
        if settings.model_at(level) != model:  # from rigid to affine: the rigid result becomes the start
            model = settings.model_at(level)
            linear0, shift0 = _start(moving_levels, center, settings.init, current)
            params = torch.zeros(batch, PARAMETERS[model], dtype=torch.float64, device=device, requires_grad=True)
        points, fixed_values = sample_fixed_points(fixed_levels[level], mask_levels[level] if mask_levels else None,
                                                   settings.points_at(level), settings.seed + 1000 * level,
                                                   inside_moving(current, to_voxel, moving_volume.shape[2:]))
        stacked = with_world_gradient(moving_volume, VOXEL_UNITS.expand(batch, 4, 4))  # derivatives per voxel
        moving_range, prepared = _prepare_metric(settings, fixed_values, moving_volume)
        rate = settings.learning_rate / 2**level
        optimizer = torch.optim.Adam([params], lr=rate)
        steps = settings.iterations[level]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_decay(steps))
        trace = []
        for _ in range(steps):
            optimizer.zero_grad()
            matrix = _matrix(params, model, linear0, shift0, center)
            voxel = map_points(compose_matrices(to_voxel, matrix), points)  # in the moving level's grid
            values, inside = sample_voxels_fast(stacked, voxel)
            loss = _loss(settings, fixed_values, values, moving_range, prepared, inside)
            loss.sum().backward()
            optimizer.step()
            scheduler.step()
            trace.append(loss.detach())
            if progress is not None:
                progress(level)
        history.append([float(v) for v in torch.stack(trace).mean(dim=1).cpu()] if trace else [])
    with torch.no_grad():
        final = _matrix(params, model, linear0, shift0, center)
    return AffineOutcome(final.detach(), history)


def _linear_decay(steps: int):
    """The learning-rate factor of iteration ``i``: from 1 down to 0.02 over the level (Adam then settles)."""
    return lambda i: 1.0 - 0.98 * i / max(steps - 1, 1)


def _per_sample(affine: np.ndarray, batch: int) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    return np.broadcast_to(affine, (batch, 4, 4)).copy() if affine.ndim == 2 else affine


def _pyramids(volume: torch.Tensor, affines: np.ndarray, levels: int) -> list[tuple[torch.Tensor, np.ndarray]]:
    """Per level, the batch's volume and the affines ``[B, 4, 4]`` (the shrink steps follow the first sample)."""
    per_level = gaussian_pyramid(volume.float(), affines[0], levels)
    scales = [np.linalg.inv(affines[0]) @ affine for _, affine in per_level]
    return [(level_volume, affines @ scale) for (level_volume, _), scale in zip(per_level, scales)]


def _prepare_metric(settings: AffineSettings, fixed_values: torch.Tensor,
                    moving: torch.Tensor) -> tuple[torch.Tensor, FixedBins | None]:
    """A level's constants of the metric: the moving intensity range ``[B, 2]`` and, for MI, the binned fixed samples.

    The ranges are each sample's: the fixed samples' (masked-out ones count as 0) and the whole
    moving level's, from at most 0 up.
    """
    flat = moving.reshape(len(moving), -1)
    moving_range = torch.stack([flat.amin(dim=1).clamp(max=0.0), flat.amax(dim=1)], dim=1)
    if settings.metric != "mi":
        return moving_range, None
    finite = torch.nan_to_num(fixed_values[:, 0], nan=0.0)
    fixed_range = torch.stack([finite.amin(dim=1), finite.amax(dim=1)], dim=1)
    return moving_range, fixed_bins(fixed_values[:, 0], fixed_range, settings.bins)


def _loss(settings: AffineSettings, fixed_values: torch.Tensor, moving_values: torch.Tensor,
          moving_range: torch.Tensor, prepared: FixedBins | None, inside: torch.Tensor) -> torch.Tensor:
    """The per-pair loss ``[B]`` to minimise (negative similarity, or MSE) over the points ``inside`` ``[B, N]``."""
    if prepared is not None:  # the fixed side binned once per level
        return -point_mutual_information(prepared, moving_values[:, 0], moving_range, inside)
    used = ~torch.isnan(fixed_values) & inside[:, None]
    fixed5 = torch.nan_to_num(fixed_values, nan=0.0)[..., None, None]
    moving5 = moving_values[..., None, None]
    mask = used[..., None, None]
    if settings.metric == "mse":
        return mean_squared_error(fixed5, moving5, mask=mask)
    return -normalized_cross_correlation(fixed5, moving5, mask=mask)


def _matrix(params: torch.Tensor, model: str, linear0: torch.Tensor, shift0: torch.Tensor,
            center: torch.Tensor) -> torch.Tensor:
    """The world matrices ``[B, 4, 4]`` of the scaled parameters, composed after the start ``(linear0, shift0)``."""
    if model == "rigid":
        linear = rotation_from_vector(params[:, :3] / RADIUS_MM)
        translation = params[:, 3:6]
    else:
        linear = torch.eye(3, dtype=params.dtype, device=params.device) + params[:, :9].reshape(-1, 3, 3) / RADIUS_MM
        translation = params[:, 9:12]
    return world_matrix(linear @ linear0, translation + shift0, center)


def _center(levels: list[tuple[torch.Tensor, np.ndarray]],
            mask_levels: list[tuple[torch.Tensor, np.ndarray]] | None) -> torch.Tensor:
    """The centre of mass ``[B, 3]`` (world mm) from the second-finest level (an eighth of the cost)."""
    level = -2 if len(levels) > 1 else -1
    volume, affines = levels[level]
    mask = mask_levels[level][0] > 0.5 if mask_levels is not None else None
    return center_of_mass(volume, torch.from_numpy(affines), mask).to(volume.device)


def _start(moving_levels, center, init, initial):
    """The starting linear part and translation: ``initial``'s, the centres of mass's, or the identity."""
    batch, device = len(center), center.device
    eye = torch.eye(3, dtype=torch.float64, device=device).expand(batch, 3, 3).clone()
    if initial is not None:
        initial = torch.as_tensor(initial, dtype=torch.float64, device=device).expand(batch, 4, 4)
        linear = initial[:, :3, :3]
        # y = L x + b = L (x - c) + c + t  ->  t = b + L c - c
        shift = initial[:, :3, 3] + (linear @ center[..., None])[..., 0] - center
        return linear.clone(), shift
    if init == "center_of_mass":
        return eye, _center(moving_levels, None) - center
    return eye, torch.zeros(batch, 3, dtype=torch.float64, device=device)
