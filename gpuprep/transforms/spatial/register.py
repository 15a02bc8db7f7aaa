"""Registration as a pipeline step: align keys to a reference key (another modality) or to a template image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError
from ...records import make_step
from ...registration import register
from ...validation import check_int, check_non_negative, check_positive
from ..fusion import Grid
from .resample import _Interpolating


class _ToReference(_Interpolating, abstract=True):
    """What the two steps share: a reference grid from a key or an image file, and the steps onto it."""

    reference_key: str | None
    _reference_file: str | None
    _read: tuple[torch.Tensor, np.ndarray] | None = None

    def _set_reference(self, reference_key: str | None, path: str | None, path_name: str) -> None:
        if (reference_key is None) == (path is None):
            raise ConfigError(f"{type(self).__name__}: give exactly one of reference_key and {path_name}, "
                              f"got reference_key={reference_key!r}, {path_name}={path!r}")
        self.reference_key, self._reference_file = reference_key, path

    def _reference_image(self) -> tuple[torch.Tensor, np.ndarray]:
        """The reference file's image ``[C, D, H, W]`` float32 and affine, read once per transform."""
        if self._read is None:
            from ...io.reader import read_image

            volume, meta = read_image(self._reference_file, dtype="float32")  # type: ignore[arg-type]
            self._read = volume, np.asarray(meta["affine"], dtype=np.float64)
        return self._read

    def _reference_grid(self, grids: Mapping[str, Grid], size: int) -> tuple[tuple, np.ndarray]:
        """The output grid: its shape and affines ``[B, 4, 4]``."""
        if self._reference_file is not None:
            volume, affine = self._reference_image()
            return tuple(volume.shape[1:]), np.broadcast_to(affine, (size, 4, 4)).copy()
        if self.reference_key is None or self.reference_key not in grids:
            raise ConfigError(f"{type(self).__name__}: reference key {self.reference_key!r} is not an image of the "
                              f"sample; images: {sorted(grids)}")
        shape, affines = grids[self.reference_key]
        return tuple(shape), np.asarray(affines, dtype=np.float64)

    @staticmethod
    def _steps(grids: Mapping[str, Grid], keys: list[str], matrices: np.ndarray, out_shape: tuple,
               out_affines: np.ndarray) -> list[dict]:
        """Per sample, every key's step onto the output grid through ``matrices`` (output world to the key's world)."""
        params: list[dict] = [{} for _ in range(len(out_affines))]
        for key in keys:
            shape, affines = grids[key]
            for index, param in enumerate(params):
                voxel_map = np.linalg.inv(affines[index]) @ matrices[index] @ out_affines[index]
                param[key] = make_step(shape, affines[index], out_shape, voxel_map, out_affine=out_affines[index])
        return params


class RegisterToReference(_ToReference):
    """Register the first key to a reference and move every key onto the reference's grid (rigid, affine or deformable).

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

    With ``model="deformable"`` each key's step also carries the fitted velocity field (entry
    ``"velocity"``: its B-spline lattice, about 26,000 numbers for a 1 mm brain at the default
    12 mm spacing, small enough for the JSON history), from which the resampling builds
    ``exp(v)`` and :func:`gpuprep.invert` builds ``exp(-v)``. It is then a warping step: a
    resampling holds one, so an elastic augmentation after it starts a new one.

    Parameters
    ----------
    keys:
        The keys to move; the first is registered (one channel, or its first channel).
    reference_key, template:
        Exactly one: a key of the sample, or an image path read with :func:`gpuprep.read_image`.
    model, metric, levels, iterations, points, seed, deformable_iterations, control_spacing, bending_weight:
        As in :func:`gpuprep.register`.
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
        points: int = 20_000,
        seed: int = 0,
        deformable_iterations: Sequence[int] = (60, 40),
        control_spacing: float = 12.0,
        bending_weight: float | None = None,
        mode: str = "linear",
        padding_mode: str = "zeros",
        label_mode: str = "nearest",
        padding_value: float | str = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self._set_reference(reference_key, template, "template")
        if model not in ("rigid", "affine", "deformable"):
            raise ConfigError(f"{name}: model must be 'rigid', 'affine' or 'deformable', got {model!r}")
        if model == "deformable" and mode == "cubic":
            raise ConfigError(f"{name}: a deformable registration resamples with mode 'linear' or 'nearest', "
                              f"got {mode!r}")
        self.warps = model == "deformable"
        self.deformable_iterations = [check_int(name, "deformable_iterations", v, minimum=1)
                                      for v in deformable_iterations]
        self.control_spacing = check_positive(name, "control_spacing", control_spacing)
        self.bending_weight = None if bending_weight is None else check_non_negative(name, "bending_weight",
                                                                                     bending_weight)
        self.template = template
        self.model, self.metric = model, metric
        self.levels = check_int(name, "levels", levels, minimum=1)
        self.iterations = None if iterations is None else [check_int(name, "iterations", v, minimum=1)
                                                            for v in iterations]
        self.points = check_int(name, "points", points, minimum=1)
        self.seed = check_int(name, "seed", seed, minimum=0)
        self._set_interpolation(mode, False, padding_mode, label_mode, padding_value)

    def plan(self, grids: Mapping[str, Grid], batch: Mapping, keys: list[str]) -> list[dict]:
        size = grids[keys[0]][1].shape[0]
        fixed_shape, fixed_affines = self._reference_grid(grids, size)
        if self.template is not None:
            device = batch[keys[0]].device
            volume = self._reference_image()[0][:1]
            fixed = volume.expand(size, 1, *volume.shape[1:]).to(device)
        else:
            fixed = batch[self.reference_key][:, :1].float()
        result = register(fixed, batch[keys[0]][:, :1].float(), model=self.model, metric=self.metric,
                          levels=self.levels, iterations=self.iterations, fixed_affine=fixed_affines,
                          moving_affine=grids[keys[0]][1], points=self.points, seed=self.seed,
                          deformable_iterations=self.deformable_iterations, control_spacing=self.control_spacing,
                          bending_weight=self.bending_weight)
        matrices = np.asarray(result.matrix).reshape(size, 4, 4)
        params = self._steps(grids, keys, matrices, fixed_shape, fixed_affines)
        lattices = None if result.velocity_lattice is None else result.velocity_lattice.reshape(
            size, *result.velocity_lattice.shape[-4:]).cpu().numpy()
        for index, (param, matrix) in enumerate(zip(params, matrices)):
            param["registration"] = {"model": self.model, "metric": self.metric, "matrix": matrix.tolist()}
            if lattices is not None:
                velocity = {"lattice": lattices[index].tolist(), "control_spacing_mm": result.control_spacing,
                            "squaring_steps": result.squaring_steps}
                for key in keys:
                    param[key]["velocity"] = velocity
        return params


class ApplyTransform(_ToReference):
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
        self._set_reference(reference_key, reference, "reference")
        self.transform, self.reference = transform, reference
        self.matrix = _matrix_from(transform, type(self).__name__)
        self._set_interpolation(mode, False, padding_mode, label_mode, padding_value)

    def plan(self, grids: Mapping[str, Grid], batch: Mapping, keys: list[str]) -> list[dict]:
        size = grids[keys[0]][1].shape[0]
        out_shape, out_affines = self._reference_grid(grids, size)
        return self._steps(grids, keys, np.broadcast_to(self.matrix, (size, 4, 4)), out_shape, out_affines)


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
