"""The base of spatial transforms: each one is a choice of output grid plus a voxel map.

A spatial transform never touches data to decide what to do (except the few marked
``fusable = False``, such as cropping to the foreground). For every sample and key it takes the
current grid ``(shape, affine)`` and returns a *step* (:class:`gpuprep.records.Step`, built with
:func:`~gpuprep.records.make_step`)::

    {"in_shape": [D, H, W], "in_affine": 4x4, "out_shape": [...], "out_affine": 4x4, "voxel_map": 4x4}

where ``voxel_map`` maps output voxels to input voxels (see :mod:`gpuprep.functional.grid`).
The step is the record's parameters, so it documents the operation, replays it and inverts it
(:func:`gpuprep.invert`). Because steps are pure metadata, :class:`~gpuprep.Compose` chains the
steps of consecutive spatial transforms and resamples the data **once** with the product of their
maps: the fusion engine is :mod:`gpuprep.transforms.fusion`.

Data follow the **kind** of their key (:func:`gpuprep.get_kind`), never the dtype: intensity
images are interpolated (an integer one becomes float32 when a step interpolates, as in MONAI)
and padded with the transform's ``padding_value``; label maps are resampled by nearest neighbour
(or one-hot) whatever their dtype, keep their values, and are padded with 0.

Padding values: a number, or ``"minimum"`` (each sample's and channel's own minimum, computed on
the data's device). A fused chain pads with the one value its steps ask for; Compose never fuses
steps that ask for different values (:func:`~gpuprep.transforms.spatial.padding.fusable_runs`
splits the run there), so fused and unfused results agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from ...records import make_step
from ...sample import image_keys
from ..base import Transform
from ..fusion import Grid, current_grids, resample_chains


class SpatialTransform(Transform, abstract=True):
    """Base class of transforms that move data to a new voxel grid.

    Subclasses implement :meth:`grid_step` (or :meth:`plan` when the step depends on more than
    one key or on the data) and set ``mode`` when they interpolate. Label maps (by kind, not
    dtype) are always resampled with nearest neighbour (or one-hot), so they keep their dtype and
    set of values, and are padded with 0.
    """

    spatial = True
    invertible = True
    #: False when the output grid depends on the data (then Compose cannot fuse it with others).
    fusable: ClassVar[bool] = True
    #: True for steps that move voxels by a displacement field (elastic, deformable registration);
    #: one per fused run. An instance may set it (a registration warps only when deformable).
    warps: bool = False
    #: Interpolation for floating-point images; None for transforms that never interpolate.
    mode: str | None = None
    anti_aliasing: bool = False
    #: What points outside the input get: "zeros" or "border" (the nearest edge value); None for
    #: transforms that never look outside their input (a fused chain then follows the others).
    padding_mode: str | None = "zeros"
    #: How label maps are resampled when a step interpolates: "nearest" or "onehot".
    label_mode: str = "nearest"
    #: The constant intensity images get outside the input under ``padding_mode="zeros"``: a
    #: number or "minimum" (per sample and channel). Label maps always get 0.
    padding_value: float | str = 0.0

    def grid_step(self, key: str, shape: tuple[int, ...], affine: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
        """Return ``(out_shape, voxel_map)`` for one sample's grid; the world position is kept."""
        raise NotImplementedError(f"{type(self).__name__} does not implement grid_step")

    def plan(self, grids: Mapping[str, Grid], batch: Mapping, keys: list[str]) -> list[dict]:
        """Return the per-sample parameters ``{key: step}`` for the given current grids."""
        size = grids[keys[0]][1].shape[0]
        params: list[dict] = [{} for _ in range(size)]
        for key in keys:
            shape, affines = grids[key]
            for index in range(size):
                out_shape, voxel_map = self.grid_step(key, shape, affines[index])
                params[index][key] = make_step(shape, affines[index], out_shape, voxel_map)
        return params

    def make_params(self, batch: dict, keys: list[str]) -> list[dict]:
        return self.plan(current_grids(batch, [*keys, *image_keys(batch)]), batch, keys)

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        resample_chains(batch, {key: [(self, [p[key] for p in params])] for key in keys})
        return batch

