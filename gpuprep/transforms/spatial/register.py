"""Registration as a pipeline step: align keys to a reference key (another modality) or to a template image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError
from ...records import make_step
from ...registration import register
from ...validation import check_int
from ..fusion import Grid
from .resample import _Interpolating


class RegisterToReference(_Interpolating):
    """Register the first key to a reference and move every key onto the reference's grid (rigid or affine).

    The reference is another key of the sample (``reference_key``: e.g. a T2 or FLAIR onto the T1)
    or an image file (``template``: spatial normalisation). :func:`gpuprep.register` finds the
    world matrix from the first key's image to the reference; then every listed key (the image,
    its other channels or modalities in the same space, its label maps) is resampled onto the
    reference grid through that matrix: images by interpolation, labels by nearest neighbour (or
    one-hot). It is a spatial step with a voxel map, so :func:`gpuprep.invert` undoes it (a
    prediction in template space goes back to the scan) and the record holds the step and the
    registration's matrix (``params["registration"]``), so a replay repeats it without registering
    again. The registration reads the image as it is when the step starts, so the spatial steps
    before it are resampled first; the steps after it fuse with it into one resampling.

    Parameters
    ----------
    keys:
        The keys to move; the first is registered (one channel, or its first channel).
    reference_key, template:
        Exactly one: a key of the sample, or an image path read with :func:`gpuprep.read_image`.
    model, metric, levels, iterations, points, seed:
        As in :func:`gpuprep.register` (``"rigid"`` or ``"affine"``).
    mode, padding_mode, padding_value, label_mode:
        As in :class:`ResampleToReference`.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> t1 = gp.data.phantom(shape=(24, 24, 24), seed=0)
    >>> sample = {**t1, "t2": 1.0 - t1["image"], "t2_meta": t1["image_meta"]}
    >>> out = gp.RegisterToReference("t2", reference_key="image", model="rigid", levels=1, iterations=[5])(sample)
    >>> out["t2"].shape, gp.get_history(out)[-1]["params"]["registration"]["model"]
    (torch.Size([1, 24, 24, 24]), 'rigid')
    """

    #: It reads the image it registers, so it starts a fused run and never joins one.
    reads_data: ClassVar[bool] = True

    def __init__(
        self,
        keys: str | Sequence[str],
        reference_key: str | None = None,
        template: str | None = None,
        model: str = "affine",
        metric: str = "mi",
        levels: int = 3,
        iterations: Sequence[int] | None = None,
        points: int = 10_000,
        seed: int = 0,
        mode: str = "linear",
        padding_mode: str = "zeros",
        label_mode: str = "nearest",
        padding_value: float | str = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        if (reference_key is None) == (template is None):
            raise ConfigError(f"{name}: give exactly one of reference_key and template, "
                              f"got reference_key={reference_key!r}, template={template!r}")
        if model not in ("rigid", "affine"):
            raise ConfigError(f"{name}: model must be 'rigid' or 'affine' in a pipeline, got {model!r}")
        self.reference_key, self.template = reference_key, template
        self.model, self.metric = model, metric
        self.levels = check_int(name, "levels", levels, minimum=1)
        self.iterations = None if iterations is None else [check_int(name, "iterations", v, minimum=1)
                                                            for v in iterations]
        self.points = check_int(name, "points", points, minimum=1)
        self.seed = check_int(name, "seed", seed, minimum=0)
        self._set_interpolation(mode, False, padding_mode, label_mode, padding_value)

    def plan(self, grids: Mapping[str, Grid], batch: Mapping, keys: list[str]) -> list[dict]:
        fixed, fixed_affines, fixed_shape = self._reference(grids, batch)
        _moving_shape, moving_affines = grids[keys[0]]
        moving = batch[keys[0]][:, :1].float()
        result = register(fixed, moving, model=self.model, metric=self.metric, levels=self.levels,
                          iterations=self.iterations, fixed_affine=fixed_affines, moving_affine=moving_affines,
                          points=self.points, seed=self.seed)
        matrices = result.matrix
        params: list[dict] = []
        for index in range(len(matrices)):
            param: dict = {"registration": {"model": self.model, "metric": self.metric,
                                            "matrix": matrices[index].tolist()}}
            for key in keys:
                shape, affines = grids[key]
                voxel_map = np.linalg.inv(affines[index]) @ matrices[index] @ fixed_affines[index]
                param[key] = make_step(shape, affines[index], fixed_shape, voxel_map, out_affine=fixed_affines[index])
            params.append(param)
        return params

    def _reference(self, grids: Mapping[str, Grid], batch: Mapping) -> tuple[torch.Tensor, np.ndarray, tuple]:
        """The fixed image ``[B, 1, D, H, W]``, its affines ``[B, 4, 4]`` and its shape."""
        size = next(iter(grids.values()))[1].shape[0]
        if self.template is not None:
            from ...io.reader import read_image

            volume, meta = read_image(self.template, dtype="float32")
            affines = np.broadcast_to(np.asarray(meta["affine"], dtype=np.float64), (size, 4, 4)).copy()
            device = next(v for v in batch.values() if isinstance(v, torch.Tensor)).device
            return volume[:1].expand(size, 1, *volume.shape[1:]).to(device), affines, tuple(volume.shape[1:])
        if self.reference_key is None or self.reference_key not in grids:
            raise ConfigError(f"{type(self).__name__}: reference key {self.reference_key!r} is not an image of the "
                              f"sample; images: {sorted(grids)}")
        shape, affines = grids[self.reference_key]
        return batch[self.reference_key][:, :1].float(), np.asarray(affines, dtype=np.float64), tuple(shape)


class ApplyTransform(_Interpolating):
    """Move keys onto a reference grid through a saved affine: a registration result, or ANTs', elastix's or ITK's.

    The transform is an ITK ``.tfm``/``.txt`` or ``.mat`` file (as ANTs, SimpleITK and
    :func:`gpuprep.io.transform_files.write_affine` write it) or a ``[4, 4]`` matrix, mapping
    reference-world points to the keys' world (RAS mm; ITK's direction). The output grid is the
    ``reference_key``'s or that of the image file ``reference``. Like :class:`RegisterToReference`
    it is a spatial step: labels go by nearest neighbour (or one-hot), it fuses with its
    neighbours and :func:`gpuprep.invert` undoes it.

    Parameters
    ----------
    keys:
        The keys to move.
    transform:
        A transform file path or a ``[4, 4]`` matrix (nested lists).
    reference_key, reference:
        Exactly one: a key of the sample, or an image path whose grid is the output's.
    mode, padding_mode, padding_value, label_mode:
        As in :class:`ResampleToReference`.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.data.phantom(shape=(16, 16, 16), seed=0)
    >>> shift = [[1, 0, 0, 4.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]   # 4 mm along x
    >>> out = gp.ApplyTransform(["image", "label"], transform=shift, reference_key="image")(s)
    >>> bool(torch.equal(out["label"][0, :-2], s["label"][0, 2:]))   # 2 voxels of 2 mm
    True
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        transform: str | Sequence[Sequence[float]],
        reference_key: str | None = None,
        reference: str | None = None,
        mode: str = "linear",
        padding_mode: str = "zeros",
        label_mode: str = "nearest",
        padding_value: float | str = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        if (reference_key is None) == (reference is None):
            raise ConfigError(f"{name}: give exactly one of reference_key and reference, "
                              f"got reference_key={reference_key!r}, reference={reference!r}")
        self.transform, self.reference_key, self.reference = transform, reference_key, reference
        self.matrix = _matrix_from(transform, name)
        self._set_interpolation(mode, False, padding_mode, label_mode, padding_value)

    def plan(self, grids: Mapping[str, Grid], batch: Mapping, keys: list[str]) -> list[dict]:
        size = grids[keys[0]][1].shape[0]
        if self.reference is not None:
            from ...io.reader import read_image

            volume, meta = read_image(self.reference)
            out_shape, out_affine = tuple(volume.shape[1:]), np.asarray(meta["affine"], dtype=np.float64)
            out_affines = np.broadcast_to(out_affine, (size, 4, 4))
        elif self.reference_key is not None and self.reference_key in grids:
            out_shape, out_affines = grids[self.reference_key]
        else:
            raise ConfigError(f"{type(self).__name__}: reference key {self.reference_key!r} is not an image of the "
                              f"sample; images: {sorted(grids)}")
        params: list[dict] = [{} for _ in range(size)]
        for key in keys:
            shape, affines = grids[key]
            for index, param in enumerate(params):
                voxel_map = np.linalg.inv(affines[index]) @ self.matrix @ out_affines[index]
                param[key] = make_step(shape, affines[index], out_shape, voxel_map, out_affine=out_affines[index])
        return params


def _matrix_from(transform, owner: str) -> np.ndarray:
    """The ``[4, 4]`` RAS matrix of a transform file or a nested list."""
    if isinstance(transform, str):
        from ...io.transform_files import read_affine

        return read_affine(transform)
    matrix = np.asarray(transform, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise ConfigError(f"{owner}: transform must be a file path or a finite 4x4 matrix with last row "
                          f"[0, 0, 0, 1], got {transform!r}")
    return matrix
