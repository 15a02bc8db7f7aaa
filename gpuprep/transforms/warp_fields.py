"""The dense fields of warping steps: per entry of :data:`gpuprep.records.WARP_ENTRIES`, its builder.

A warping step moves voxels by a dense displacement field besides its voxel map. The step stores
what defines the field (for RandElastic, B-spline control points); the fusion engine
(:mod:`gpuprep.transforms.fusion`) asks :data:`FIELD_BUILDERS` for the dense field when it
resamples. A new kind of warping step (say, a field from a registration optimiser) registers its
builder here and its entry in :data:`gpuprep.records.WARP_ENTRIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from ..functional.elastic import bspline_field, bspline_rows, bspline_taps
from ..functional.resample import resample
from ..functional.warp import invert_displacement
from ..registration.deformable import displacement_from_lattice

__all__ = ["FIELD_BUILDERS", "SEPARABLE_BUILDERS", "bspline_displacement_field", "bspline_displacement_rows",
           "velocity_displacement_field"]


def _coefficients(steps: Sequence[Mapping]) -> np.ndarray:
    """The control-point displacements ``[B, 3, nD, nH, nW]`` of an elastic step; zero for samples it skipped."""
    grids = [np.asarray(s["displacement"], dtype=np.float32) for s in steps if "displacement" in s]
    coefficients = np.zeros((len(steps), *grids[0].shape), dtype=np.float32)
    for index, step in enumerate(steps):
        if "displacement" in step:
            coefficients[index] = step["displacement"]
    return coefficients


def bspline_displacement_rows(steps: Sequence[Mapping], device: torch.device) -> tuple | None:
    """An elastic step's field, separably: ``(rows, first, taps)`` for the numba warp kernel; None for an inverse.

    ``rows`` is :func:`~gpuprep.functional.elastic.bspline_rows` ``[B, 3, D, H, nW]`` and
    ``first``, ``taps`` the W axis's :func:`~gpuprep.functional.elastic.bspline_taps`: the kernel
    evaluates :func:`bspline_displacement_field` from them, bit for bit. An inverse field (for
    ``gp.invert``) is solved numerically and has no such form.
    """
    if any(s.get("inverse", False) for s in steps):
        return None
    shape = tuple(steps[0]["in_shape"])
    coefficients = torch.from_numpy(_coefficients(steps)).to(device)
    return (bspline_rows(coefficients, shape), *bspline_taps(int(shape[2]), coefficients.shape[4]))


def bspline_displacement_field(steps: Sequence[Mapping], device: torch.device) -> torch.Tensor:
    """The dense field ``[B, 3, D, H, W]`` (voxels) of an elastic step; zero for samples it skipped.

    Example
    -------
    >>> from gpuprep.records import make_step
    >>> step = {**make_step((4, 4, 4), np.eye(4), (4, 4, 4), np.eye(4)), "displacement": np.zeros((3, 4, 4, 4))}
    >>> tuple(bspline_displacement_field([step], torch.device("cpu")).shape)
    (1, 3, 4, 4, 4)
    """
    shape = tuple(steps[0]["in_shape"])
    coefficients = _coefficients(steps)
    field = bspline_field(torch.from_numpy(coefficients).to(device), shape)
    if any(s.get("inverse", False) for s in steps):
        # The inverse is solved on a coarser grid where control points lie >= 24 voxels apart:
        # there trilinear interpolation of the smooth inverse costs < 0.03 voxel.
        cell = min((n - 1) / (m - 3) for n, m in zip(shape, coefficients.shape[2:]))
        field = invert_displacement(field, stride=max(1, int(cell // 24)))
    return field


def velocity_displacement_field(steps: Sequence[Mapping], device: torch.device) -> torch.Tensor:
    """The field ``[B, 3, D, H, W]`` (voxels of the step's output grid) of a deformable registration step.

    The forward step's output grid is the fixed (reference) grid: its field is ``exp(v)``
    (:func:`~gpuprep.registration.deformable.displacement_from_lattice`) in fixed voxels. The
    inverse step (for ``gp.invert``) reads the fixed grid at ``W q + u'(q)`` for a voxel ``q`` of
    the key's grid, where ``W`` is its voxel map; ``exp(-v)`` undoes ``exp(v)`` after ``W``, so
    ``u'(q) = W_lin^-1 exp(-v)(W q)``: the inverse field resampled through ``W`` and turned into
    the key's voxel axes.
    """
    first = steps[0]
    inverse = bool(first.get("inverse", False))
    fixed_shape, fixed_entry = (first["in_shape"], "in_affine") if inverse else (first["out_shape"], "out_affine")
    fixed_affines = np.stack([np.asarray(s[fixed_entry], dtype=np.float64) for s in steps])
    lattice = torch.from_numpy(np.stack([np.asarray(s["velocity"]["lattice"], dtype=np.float32) for s in steps]))
    world = displacement_from_lattice(lattice.to(device), fixed_shape, fixed_affines,
                                      float(first["velocity"]["control_spacing_mm"]),
                                      int(first["velocity"]["squaring_steps"]), inverse=inverse)
    to_voxels = torch.from_numpy(np.linalg.inv(fixed_affines[:, :3, :3])).to(device, world.dtype)
    field = torch.einsum("bij,bj...->bi...", to_voxels, world)  # fixed voxels
    if not inverse:
        return field
    maps = np.stack([np.asarray(s["voxel_map"], dtype=np.float64) for s in steps])  # key voxel -> fixed voxel
    moved = resample(field, maps, tuple(first["out_shape"]), "linear", padding_mode="border")
    back = torch.from_numpy(np.linalg.inv(maps[:, :3, :3])).to(device, moved.dtype)
    return torch.einsum("bij,bj...->bi...", back, moved)


#: Per warp entry of :data:`gpuprep.records.WARP_ENTRIES`, the function ``(steps, device) -> field``
#: that builds the dense displacement field ``[B, 3, D, H, W]`` (voxels of the input grid) of a
#: warping step's per-sample steps.
FIELD_BUILDERS: dict[str, Callable[[Sequence[Mapping], torch.device], torch.Tensor]] = {
    "displacement": bspline_displacement_field,
    "velocity": velocity_displacement_field,
}

#: Per warp entry, the function ``(steps, device) -> (rows, first, taps) | None`` giving the field
#: separably for the numba warp kernel (see :func:`bspline_displacement_rows`); an entry without
#: one is always warped through its dense field.
SEPARABLE_BUILDERS: dict[str, Callable[[Sequence[Mapping], torch.device], tuple | None]] = {
    "displacement": bspline_displacement_rows,
}
