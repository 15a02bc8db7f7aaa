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

from ..functional.elastic import bspline_field
from ..functional.warp import invert_displacement

__all__ = ["FIELD_BUILDERS", "bspline_displacement_field"]


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
    grids = [np.asarray(s["displacement"], dtype=np.float32) for s in steps if "displacement" in s]
    coefficients = np.zeros((len(steps), *grids[0].shape), dtype=np.float32)
    for index, step in enumerate(steps):
        if "displacement" in step:
            coefficients[index] = step["displacement"]
    field = bspline_field(torch.from_numpy(coefficients).to(device), shape)
    if any(s.get("inverse", False) for s in steps):
        # The inverse is solved on a coarser grid where control points lie >= 24 voxels apart:
        # there trilinear interpolation of the smooth inverse costs < 0.03 voxel.
        cell = min((n - 1) / (m - 3) for n, m in zip(shape, coefficients.shape[2:]))
        field = invert_displacement(field, stride=max(1, int(cell // 24)))
    return field


#: Per warp entry of :data:`gpuprep.records.WARP_ENTRIES`, the function ``(steps, device) -> field``
#: that builds the dense displacement field ``[B, 3, D, H, W]`` (voxels of the input grid) of a
#: warping step's per-sample steps.
FIELD_BUILDERS: dict[str, Callable[[Sequence[Mapping], torch.device], torch.Tensor]] = {
    "displacement": bspline_displacement_field,
}
