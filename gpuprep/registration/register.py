"""``gp.register``: align a moving image to a fixed one, from files, samples or tensors, on the data's device."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..sample import get_affine
from ..validation import check_int, check_non_negative, check_positive
from .affine import METRICS, MODELS, AffineSettings, register_affine
from .deformable import DeformableSettings, register_deformable

__all__ = ["RegistrationResult", "register"]

DEFAULT_ITERATIONS = {1: (60,), 2: (60, 40), 3: (60, 40, 40), 4: (80, 60, 40, 40)}


@dataclass
class RegistrationResult:
    """What :func:`register` returns.

    Attributes
    ----------
    matrix:
        ``[4, 4]`` (one pair) or ``[B, 4, 4]`` float64: maps a point of the fixed image's world to
        the matching point of the moving image's world, RAS mm (ITK's direction: it pulls the
        moving image onto the fixed grid).
    fixed_affine, fixed_shape:
        The fixed grid the result belongs to.
    model, metric:
        What was fitted and how it was scored.
    metric_history:
        Per level (coarsest first), the loss of every iteration, averaged over the batch
        (negative similarity for ``"mi"`` and ``"ncc"``, the mean squared error for ``"mse"``).
    seconds:
        Wall time of the registration (pyramids, initialisation and optimisation).
    displacement, inverse_displacement:
        Deformable only: ``[3, D, H, W]`` (``[B, 3, D, H, W]`` for a batch) float32 fields on the
        fixed grid, RAS mm. A fixed-world point ``x`` maps to ``matrix @ (x + displacement(x))``
        in the moving image; ``inverse_displacement`` undoes ``displacement`` (``exp(-v)``).
        The metric history then continues with the deformable levels.
    velocity_lattice, control_spacing, squaring_steps:
        Deformable only: the fitted velocity's B-spline coefficients ``[3, cD, cH, cW]`` (``[B, ...]``
        for a batch; mm along the fixed image's array axes), their spacing in mm and the
        scaling-and-squaring steps: :func:`~gpuprep.registration.deformable.displacement_from_lattice`
        rebuilds both fields from them (what a pipeline records).
    """

    matrix: np.ndarray
    fixed_affine: np.ndarray
    fixed_shape: tuple[int, ...]
    model: str
    metric: str
    metric_history: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0
    displacement: torch.Tensor | None = None
    inverse_displacement: torch.Tensor | None = None
    velocity_lattice: torch.Tensor | None = None
    control_spacing: float = 12.0
    squaring_steps: int = 6


def register(fixed: Any, moving: Any, model: str = "affine", metric: str = "mi", levels: int = 3,
             iterations: Sequence[int] | None = None, mask: Any = None, *, key: str = "image",
             fixed_affine: Any = None, moving_affine: Any = None, device: str | torch.device | None = None,
             points: int = 20_000, initial: Any = None, seed: int = 0,
             deformable_iterations: Sequence[int] = (60, 40), control_spacing: float = 12.0,
             bending_weight: float | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> RegistrationResult:
    """Register ``moving`` to ``fixed``: the transform that maps fixed-world points onto the moving image.

    Parameters
    ----------
    fixed, moving:
        Image paths, samples (their ``key`` entry and affine) or tensors ``[C, D, H, W]`` /
        ``[B, C, D, H, W]`` (one channel; with ``fixed_affine`` / ``moving_affine``, else the
        identity). A batch registers ``B`` pairs at once, each with its own parameters.
    model:
        ``"rigid"`` (6 parameters), ``"affine"`` (12) or ``"deformable"``: affine, then a
        diffeomorphic B-spline velocity field (:mod:`gpuprep.registration.deformable`) with the
        same metric; for one contrast, ``"mse"`` on images of the same scale is the most precise.
    metric:
        ``"mi"`` (Mattes mutual information, any pair of contrasts), ``"ncc"`` (normalised cross
        correlation, same contrast) or ``"mse"`` (same contrast and scale).
    levels, iterations:
        Pyramid levels (each halves the resolution of the finest axes) and the iterations per
        level, coarsest first.
    mask:
        A fixed-image mask (same forms as ``fixed``): only its voxels are compared.
    device:
        Where to compute (default: where ``fixed`` is).
    points:
        Random points of the fixed image that score each level, counted among those the level's
        start maps inside the moving image (more are drawn when a cropped scan covers little of the
        fixed image). 20,000: fewer made the coarsest level of a cropped real scan (nibabel's
        ``anatomical.nii`` to MNI) fall into a shrunken solution for some seeds, and the finest
        level's multi-modal error larger.
    initial:
        A starting ``[4, 4]`` (or ``[B, 4, 4]``) matrix; default: the centres of mass aligned.
    seed:
        Seed of the voxel sampling (the result is deterministic for a given seed and device).
    deformable_iterations, control_spacing:
        Deformable only: the iterations of each of its pyramid levels (coarsest first) and the
        distance in mm between the velocity field's control points.
    bending_weight:
        Deformable only: the weight of the velocity's bending energy, the regulariser (larger is
        smoother). None: 500 for MI, 2 for MSE and NCC (see
        :data:`gpuprep.registration.deformable.BENDING_WEIGHTS`).
    progress:
        Called after every iteration as ``progress(stage, done, total)``: the stage (``"affine
        level 2/3"``) and the iterations done and planned in all (a command line's progress bar).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> fixed = gp.data.phantom(shape=(32, 32, 32), seed=0)
    >>> moving = gp.Compose([gp.RandAffine("image", translate=3.0, p=1.0, seed=1)])(fixed)
    >>> result = gp.register(fixed, moving, model="rigid", metric="ncc", levels=2, iterations=(40, 20))
    >>> result.matrix.shape
    (4, 4)
    """
    if model not in (*MODELS, "deformable"):
        raise ConfigError(f"register: model must be one of {[*MODELS, 'deformable']}, got {model!r}")
    if metric not in METRICS:
        raise ConfigError(f"register: metric must be one of {list(METRICS)}, got {metric!r}")
    levels = check_int("register", "levels", levels, minimum=1)
    iterations = tuple(iterations) if iterations is not None else DEFAULT_ITERATIONS.get(levels, (100,) * levels)
    if len(iterations) != levels:
        raise ConfigError(f"register: iterations needs one count per level ({levels}), got {list(iterations)!r}")
    control_spacing = check_positive("register", "control_spacing", control_spacing)
    if bending_weight is not None:
        bending_weight = check_non_negative("register", "bending_weight", bending_weight)
    deformable_iterations = [check_int("register", "deformable_iterations", v, minimum=1)
                             for v in deformable_iterations]
    start = time.perf_counter()
    fixed_volume, fixed_affines, single = _as_batch(fixed, fixed_affine, key, "fixed", device)
    moving_volume, moving_affines, _ = _as_batch(moving, moving_affine, key, "moving", fixed_volume.device)
    mask_volume = _as_batch(mask, fixed_affines, key, "mask", fixed_volume.device)[0] if mask is not None else None
    settings = AffineSettings(model="affine" if model == "deformable" else model, metric=metric, levels=levels,
                              iterations=iterations, points=points, seed=seed)
    fixed_mask = None if mask_volume is None else mask_volume > 0
    planned = sum(iterations) + (sum(deformable_iterations) if model == "deformable" else 0)
    outcome = register_affine(fixed_volume, fixed_affines, moving_volume, moving_affines, settings,
                              fixed_mask=fixed_mask, initial=initial,
                              progress=_counter(progress, settings.model, levels, planned, 0))
    history = outcome.metric
    deformable = DeformableSettings(metric=metric, levels=len(deformable_iterations),
                                    iterations=tuple(deformable_iterations), spacing_mm=control_spacing, seed=seed,
                                    bending_weight=bending_weight)
    fields: dict[str, Any] = {}
    if model == "deformable":
        warp = register_deformable(fixed_volume, fixed_affines, moving_volume, moving_affines, outcome.matrix,
                                   deformable, fixed_mask,
                                   _counter(progress, "deformable", deformable.levels, planned, sum(iterations)))
        history = history + warp.metric
        fields = {"displacement": warp.displacement, "inverse_displacement": warp.inverse,
                  "velocity_lattice": warp.lattice}
        fields = {name: value[0] if single else value for name, value in fields.items()}
    matrix = outcome.matrix.cpu().numpy()
    return RegistrationResult(matrix[0] if single else matrix, fixed_affines[0] if single else fixed_affines,
                              tuple(fixed_volume.shape[2:]), model, metric, history,
                              time.perf_counter() - start, **fields, control_spacing=control_spacing,
                              squaring_steps=deformable.squaring_steps)


def _counter(progress: Callable[[str, int, int], None] | None, stage: str, levels: int, planned: int,
             done: int) -> Callable[[int], None] | None:
    """A ``tick(level)`` for one stage's loop that reports ``progress(stage, done, planned)``, or None."""
    if progress is None:
        return None
    count = [done]

    def tick(level: int) -> None:
        count[0] += 1
        progress(f"{stage} level {level + 1}/{levels}", count[0], planned)

    return tick


def _as_batch(value: Any, affine: Any, key: str, name: str, device) -> tuple[torch.Tensor, np.ndarray, bool]:
    """A float batch ``[B, 1, D, H, W]`` on ``device``, its affines ``[B, 4, 4]`` and whether one image was given."""
    if isinstance(value, (str, os.PathLike)):
        from ..io.reader import read_image

        volume, meta = read_image(value, dtype="float32")
        affine = meta["affine"]
    elif isinstance(value, Mapping):
        if key not in value:
            raise ConfigError(f"register: the {name} sample has no key {key!r}; it has {sorted(map(str, value))}")
        volume, affine = value[key], get_affine(value, key)
    elif isinstance(value, torch.Tensor):
        volume = value
    else:
        raise ConfigError(f"register: {name} must be a path, a sample or a tensor, got {type(value).__name__}")
    single = volume.ndim == 4
    volume = volume[None] if single else volume
    if volume.ndim != 5 or volume.shape[1] != 1:
        raise ConfigError(f"register: {name} must be one channel [1, D, H, W] or [B, 1, D, H, W], "
                          f"got shape {tuple(volume.shape)}")
    affines = np.eye(4) if affine is None else np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)
    affines = np.broadcast_to(affines, (len(volume), 4, 4)).copy() if affines.ndim == 2 else affines
    target = torch.device(device) if device is not None else volume.device
    return volume.to(target, torch.float32), affines, single
