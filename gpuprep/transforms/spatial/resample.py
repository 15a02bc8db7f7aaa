"""Resampling to a voxel spacing, a shape, or another image's grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ...errors import ConfigError
from ...functional.grid import scaling_map, spacing_of, world_preserving_map
from ...records import make_step
from ...validation import validate_mode
from ..fusion import Grid
from .base import SpatialTransform
from .padding import validate_padding_mode, validate_padding_value


class _Interpolating(SpatialTransform, abstract=True):
    """Shared constructor checks of the transforms that interpolate."""

    def _set_interpolation(self, mode: str, anti_aliasing: bool, padding_mode: str, label_mode: str,
                           padding_value: float | str = 0.0) -> None:
        name = type(self).__name__
        self.padding_value = validate_padding_value(padding_value, name)
        self.mode = validate_mode(mode, name)
        if label_mode not in ("nearest", "onehot"):
            raise ConfigError(f"{name}: label_mode must be 'nearest' or 'onehot', got {label_mode!r}")
        self.label_mode = label_mode
        self.anti_aliasing = bool(anti_aliasing)
        self.padding_mode = validate_padding_mode(padding_mode, name)


class Resample(_Interpolating):
    """Resample to a voxel spacing in mm, keeping the world position of every point.

    The output has ``round(n * spacing_in / spacing_out)`` voxels along each axis and starts at
    the same corner as the input: the outer edge of the first voxel stays put, so the field of
    view keeps its start and ends within half an output voxel of where it ended (the grid of
    ``torch.nn.functional.interpolate(scale_factor=...)``, which makes the common case one fast
    pass). The affine's directions are kept, only the voxel size changes.

    Parameters
    ----------
    keys:
        Image keys; label maps (by kind, see :func:`gpuprep.get_kind`) always use nearest neighbour.
    spacing:
        Target voxel size in mm: one number for all axes, or three (``None`` keeps an axis).
    mode:
        ``"linear"`` (default), ``"nearest"`` or ``"cubic"`` (B-spline) for intensity images (an
        integer one becomes float32).
    anti_aliasing:
        Gaussian pre-smoothing where the grid gets coarser (``sigma = (factor - 1) / 2`` voxels).
    padding_mode:
        ``"zeros"`` (a constant) or ``"border"`` for samples beyond half a voxel outside the input.
    padding_value:
        The constant of ``"zeros"`` for intensity images: a number (default 0, as MONAI and
        TorchIO) or ``"minimum"`` (each sample's and channel's minimum, e.g. air in a CT); labels get 0.
    label_mode:
        Label maps: ``"nearest"`` (default) or ``"onehot"`` (each label's mask
        interpolated linearly, then the argmax: smoother boundaries, one sync to find labels).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 20, 20, 10)}, affine=torch.diag(torch.tensor([1., 1, 2, 1])))
    >>> gp.Resample("image", spacing=2.0)(s)["image"].shape
    torch.Size([1, 10, 10, 10])
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        spacing: float | Sequence[float | None],
        mode: str = "linear",
        anti_aliasing: bool = True,
        padding_mode: str = "zeros",
        label_mode: str = "nearest",
        allow_missing_keys: bool = False,
        padding_value: float | str = 0.0,
    ):
        super().__init__(keys, allow_missing_keys)
        self.spacing = _three_positive(spacing, "spacing", type(self).__name__, allow_none=True)
        self._set_interpolation(mode, anti_aliasing, padding_mode, label_mode, padding_value)

    def grid_step(self, key, shape, affine):
        spacing_in = spacing_of(affine)
        spacing_out = np.array([s_in if s is None else s for s, s_in in zip(self.spacing, spacing_in)])
        out_shape = tuple(max(1, round(n * s_in / s_out)) for n, s_in, s_out in zip(shape, spacing_in, spacing_out))
        # Output voxel edges start at the input's first edge: the rescaling map between grids whose
        # extents are in the ratio of the spacings (scaling_map depends on that ratio only).
        return out_shape, scaling_map(spacing_out, spacing_in)


class Resize(_Interpolating):
    """Resample to a given number of voxels, keeping the field of view (the voxel size changes).

    Same grid convention as ``skimage.transform.resize`` and ``scipy.ndimage.zoom(grid_mode=True)``.

    Parameters
    ----------
    keys:
        Image keys; label maps always use nearest neighbour (or one-hot).
    shape:
        Output spatial shape ``(D, H, W)``; ``None`` or -1 keeps an axis.
    mode, anti_aliasing, padding_mode, padding_value, label_mode:
        As in :class:`Resample`.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> gp.Resize("image", (8, 8, 8))(gp.make_sample({"image": torch.rand(1, 16, 12, 8)}))["image"].shape
    torch.Size([1, 8, 8, 8])
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        shape: Sequence[int | None],
        mode: str = "linear",
        anti_aliasing: bool = True,
        padding_mode: str = "zeros",
        label_mode: str = "nearest",
        allow_missing_keys: bool = False,
        padding_value: float | str = 0.0,
    ):
        super().__init__(keys, allow_missing_keys)
        self.shape = _target_shape(shape, type(self).__name__)
        self._set_interpolation(mode, anti_aliasing, padding_mode, label_mode, padding_value)

    def grid_step(self, key, shape, affine):
        out_shape = tuple(n if target is None else target for n, target in zip(shape, self.shape))
        return out_shape, scaling_map(shape, out_shape)


class ResampleToReference(_Interpolating):
    """Resample images onto the grid (shape and affine) of another key of the same sample.

    Parameters
    ----------
    keys:
        Image keys to move.
    reference_key:
        The key whose grid they should take (its own data are not changed).
    mode, padding_mode, padding_value, label_mode:
        As in :class:`Resample`; anti-aliasing is off by default here.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 8, 8, 8), "t2": torch.rand(1, 4, 4, 4)},
    ...                    affine={"image": torch.eye(4), "t2": torch.diag(torch.tensor([2., 2, 2, 1]))})
    >>> gp.ResampleToReference("t2", reference_key="image")(s)["t2"].shape
    torch.Size([1, 8, 8, 8])
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        reference_key: str,
        mode: str = "linear",
        anti_aliasing: bool = False,
        padding_mode: str = "zeros",
        label_mode: str = "nearest",
        allow_missing_keys: bool = False,
        padding_value: float | str = 0.0,
    ):
        super().__init__(keys, allow_missing_keys)
        if not isinstance(reference_key, str) or not reference_key:
            raise ConfigError(f"ResampleToReference: reference_key must be a key name, got {reference_key!r}")
        self.reference_key = reference_key
        self._set_interpolation(mode, anti_aliasing, padding_mode, label_mode, padding_value)

    def plan(self, grids: Mapping[str, Grid], batch, keys):
        if self.reference_key not in grids:
            raise ConfigError(
                f"ResampleToReference: reference key {self.reference_key!r} is not an image of the sample; "
                f"images: {sorted(grids)}"
            )
        ref_shape, ref_affines = grids[self.reference_key]
        params: list[dict] = [{} for _ in range(ref_affines.shape[0])]
        for key in keys:
            shape, affines = grids[key]
            for index, param in enumerate(params):
                voxel_map = world_preserving_map(affines[index], ref_affines[index])
                param[key] = make_step(shape, affines[index], ref_shape, voxel_map, out_affine=ref_affines[index])
        return params


def _three_positive(value, name: str, owner: str, allow_none: bool = False) -> tuple:
    values = (value,) * 3 if value is None or isinstance(value, (int, float)) else tuple(value)
    ok = len(values) == 3 and all(
        (v is None and allow_none)
        or (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0)
        for v in values
    )
    if not ok:
        raise ConfigError(f"{owner}: {name} must be a positive number or three of them, got {value!r}")
    return tuple(None if v is None else float(v) for v in values)


def _target_shape(shape, owner: str) -> tuple:
    values = tuple(shape) if isinstance(shape, Sequence) else (shape,)
    if len(values) != 3 or not all(
        v is None or (isinstance(v, int) and not isinstance(v, bool) and (v > 0 or v == -1)) for v in values
    ):
        raise ConfigError(f"{owner}: shape must be three positive integers (None or -1 keeps an axis), got {shape!r}")
    return tuple(None if v in (None, -1) else int(v) for v in values)
