"""Exact flips and quarter turns of the voxel grid (the affine follows, world positions kept)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import ConfigError
from ...functional.grid import flip_map, rot90_map
from ...validation import spatial_axes
from .base import SpatialTransform


class Flip(SpatialTransform):
    """Reverse the order of voxels along spatial axes.

    The affine is updated so every voxel keeps its world position (as MONAI's ``Flip`` does with
    its affine): viewers show the same image, while the array a network sees is mirrored.

    Parameters
    ----------
    keys:
        Image keys.
    axes:
        Spatial axes to flip: 0, 1, 2 (D, H, W) or a sequence of them.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.arange(4.).reshape(1, 4, 1, 1)})
    >>> gp.Flip("image", axes=0)(s)["image"].flatten().tolist()
    [3.0, 2.0, 1.0, 0.0]
    """

    padding_mode = None  # voxels only change places: nothing is read from outside the input

    def __init__(self, keys: str | Sequence[str], axes: int | Sequence[int] = 0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        axes_tuple = spatial_axes(axes, "Flip")
        if len(set(axes_tuple)) != len(axes_tuple):
            raise ConfigError(f"Flip: axes must be distinct spatial axes among 0, 1, 2, got {axes!r}")
        self.axes = axes_tuple

    def grid_step(self, key, shape, affine):
        return tuple(shape), flip_map(shape, self.axes)


class Rotate90(SpatialTransform):
    """Rotate by ``k`` quarter turns in the plane of two spatial axes, as ``numpy.rot90``.

    Parameters
    ----------
    keys:
        Image keys.
    k:
        Number of quarter turns (any integer; negative turns the other way).
    axes:
        The two spatial axes of the plane, from 0, 1, 2.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> gp.Rotate90("image", k=1, axes=(0, 1))(gp.make_sample({"image": torch.rand(1, 2, 3, 4)}))["image"].shape
    torch.Size([1, 3, 2, 4])
    """

    padding_mode = None  # voxels only change places: nothing is read from outside the input

    def __init__(
        self,
        keys: str | Sequence[str],
        k: int = 1,
        axes: Sequence[int] = (0, 1),
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if not isinstance(k, int) or isinstance(k, bool):
            raise ConfigError(f"Rotate90: k must be an integer, got {k!r}")
        axes = tuple(axes)
        if len(axes) != 2 or axes[0] == axes[1] or not all(a in (0, 1, 2) for a in axes):
            raise ConfigError(f"Rotate90: axes must be two different spatial axes among 0, 1, 2, got {axes!r}")
        self.k = k
        self.axes = axes

    def grid_step(self, key, shape, affine):
        voxel_map, out_shape = np.eye(4), tuple(shape)
        for _ in range(self.k % 4):
            turn, out_shape = rot90_map(out_shape, self.axes)
            voxel_map = voxel_map @ turn
        return out_shape, voxel_map
