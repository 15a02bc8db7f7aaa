"""Random elastic deformation: a smooth cubic B-spline displacement field per sample."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...errors import ConfigError
from ...records import is_skipped
from ...validation import validate_mode
from ..random_base import RandomOptions
from ..spatial.padding import validate_padding_mode, validate_padding_value
from .spatial import _RandomSpatial

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack


class RandElastic(_RandomSpatial):
    """Warp by a random smooth displacement field (TorchIO's RandomElasticDeformation).

    Each sample draws the displacements (mm, world axes) of ``num_control_points`` control points
    per axis uniformly in ``±max_displacement``; the outer ``locked_borders`` layers stay at 0 so
    the image border does not move. The field is the cubic B-spline through those coefficients
    (ITK's ``BSplineTransform`` layout, see :func:`gpuprep.functional.elastic.bspline_basis`),
    and the output reads the input at ``x + field(x)``. The grid is kept. All keys of a sample get
    the same field; integer labels are sampled by nearest neighbour.

    In a :class:`~gpuprep.Compose` it fuses with the spatial steps around it (e.g.
    ``RandAffine`` then ``RandElastic`` then ``CropOrPad``) into **one** resampling
    (:mod:`gpuprep.functional.warp`); one elastic step per fused run. ``gp.invert`` undoes it with
    the inverse field found by fixed-point iteration
    (:func:`~gpuprep.functional.warp.invert_displacement`). For the default field on the 1 mm MNI
    brain (displacements up to 4 voxels) the inverse is off by at most 0.03 voxel (mean 4e-4);
    tissue labels warped (nearest) and mapped back (one-hot) keep Dice 0.98 for grey and white
    matter and 0.92 for the thin CSF, the loss being the two label resamplings.

    Parameters
    ----------
    keys:
        Image keys.
    num_control_points:
        Control points per axis (>= 5), one number or three.
    max_displacement:
        Largest displacement of a control point in mm, one number or three (per world axis).
    locked_borders:
        0, 1 or 2 outer layers of control points held at zero.
    mode, padding_mode:
        Interpolation of intensity images and what lies outside (``"zeros"``: a constant, ``"border"``).
    padding_value:
        The constant of ``"zeros"`` for intensity images: a number (default 0) or ``"minimum"``;
        label maps get 0.
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> t = gp.RandElastic("image", num_control_points=5, max_displacement=2.0, seed=0)
    >>> t(gp.make_sample({"image": torch.rand(1, 12, 12, 12)}))["image"].shape
    torch.Size([1, 12, 12, 12])
    """

    warps = True

    def __init__(
        self,
        keys: str | Sequence[str],
        num_control_points: int | Sequence[int] = 7,
        max_displacement: float | Sequence[float] = 7.5,
        locked_borders: int = 2,
        mode: str = "linear",
        padding_mode: str = "zeros",
        *,
        padding_value: float | str = 0.0,
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        points = (num_control_points,) * 3 if isinstance(num_control_points, int) else tuple(num_control_points)
        if len(points) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 5 for n in points):
            raise ConfigError(
                f"RandElastic: num_control_points must be an int >= 5 or three, got {num_control_points!r}"
            )
        shifts = (max_displacement,) * 3 if isinstance(max_displacement, (int, float)) else tuple(max_displacement)
        if len(shifts) != 3 or not all(isinstance(d, (int, float)) and not isinstance(d, bool) and 0 <= d < np.inf
                                       for d in shifts):
            raise ConfigError(f"RandElastic: max_displacement must be >= 0 mm, one or three, got {max_displacement!r}")
        if locked_borders not in (0, 1, 2) or isinstance(locked_borders, bool):
            raise ConfigError(f"RandElastic: locked_borders must be 0, 1 or 2, got {locked_borders!r}")
        self.num_control_points = points
        self.max_displacement = tuple(float(d) for d in shifts)
        self.locked_borders = locked_borders
        self.mode = validate_mode(mode, "RandElastic")
        if self.mode == "cubic":
            raise ConfigError("RandElastic: mode must be 'linear' or 'nearest', got 'cubic'")
        self.padding_mode = validate_padding_mode(padding_mode, "RandElastic")
        self.padding_value = validate_padding_value(padding_value, "RandElastic")

    def draw(self, rng: random.Random) -> dict:
        n_d, n_h, n_w = self.num_control_points
        lock = self.locked_borders
        coefficients = []
        for limit in self.max_displacement:  # one [nD, nH, nW] block per world axis
            block = []
            for i in range(n_d):
                plane = []
                for j in range(n_h):
                    row = []
                    for k in range(n_w):
                        border = min(i, j, k, n_d - 1 - i, n_h - 1 - j, n_w - 1 - k) < lock
                        value = rng.uniform(-limit, limit)  # drawn even when locked: aligned streams
                        row.append(0.0 if border else value)
                    plane.append(row)
                block.append(plane)
            coefficients.append(block)
        return {"coefficients": coefficients}

    def plan(self, grids, batch, keys):
        """Per key, an identity map plus the control-point displacements in that grid's voxels."""
        params = super().plan(grids, batch, keys)
        for entry in params:
            if is_skipped(entry["draw"]):
                continue
            world = np.asarray(entry["draw"]["coefficients"], dtype=np.float64)  # [3, nD, nH, nW] mm, x y z
            for key in keys:
                to_voxels = np.linalg.inv(np.asarray(entry[key]["in_affine"])[:3, :3])
                entry[key]["displacement"] = np.einsum("vw,wijk->vijk", to_voxels, world).tolist()
        return params

    def random_step(self, drawn, shape, affine, context):
        return tuple(shape), np.eye(4)
