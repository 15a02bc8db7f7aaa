"""The base of spatial transforms: each one is a choice of output grid plus a voxel map.

A spatial transform never touches data to decide what to do (except the few marked
``fusable = False``, such as cropping to the foreground). For every sample and key it takes the
current grid ``(shape, affine)`` and returns a *step*::

    {"in_shape": [D, H, W], "in_affine": 4x4, "out_shape": [...], "out_affine": 4x4, "voxel_map": 4x4}

where ``voxel_map`` maps output voxels to input voxels (see :mod:`gpuprep.functional.grid`).
The step is the record's parameters, so it documents the operation, replays it and inverts it.
Because steps are pure metadata, :class:`~gpuprep.Compose` can chain the steps of consecutive
spatial transforms and resample the data **once** with the product of their maps
(:func:`apply_fused`): one interpolation instead of several, and no intermediate volumes.

Data follow the **kind** of their key (:func:`gpuprep.get_kind`), never the dtype: intensity
images are interpolated (an integer one becomes float32 when a step interpolates, as in MONAI)
and padded with the transform's ``padding_value``; label maps are resampled by nearest neighbour
(or one-hot) whatever their dtype, keep their values, and are padded with 0.

Padding values: a number, or ``"minimum"`` (each sample's and channel's own minimum, computed on
the data's device). A fused chain pads with the one value its steps ask for; Compose never fuses
steps that ask for different values (:func:`apply_fused` splits the run there), so fused and
unfused results agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError, TransformError, short_repr
from ...foreign import adopt_foreign, sync_monai_meta_dicts
from ...functional.elastic import bspline_field
from ...functional.grid import is_lattice_map
from ...functional.resample import MODES, resample, resample_labels
from ...functional.resample_general import antialias, cached, shared_grids
from ...functional.warp import invert_displacement, warp
from ...sample import LABEL, collate, decollate, dtype_kind, get_kind, get_meta, image_keys
from ..base import Transform, replace_meta
from .padding import fusable_runs, padding_fill, padding_wish

Grid = tuple[tuple[int, ...], np.ndarray]  # (spatial shape, affines [B, 4, 4])
_MODE_ORDER = {"nearest": 0, "linear": 1, "cubic": 2}


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
    #: True for steps that move voxels by a displacement field (elastic); one per fused run.
    warps: ClassVar[bool] = False
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
        with shared_grids():
            _resample_chains(batch, {key: [(self, [p[key] for p in params])] for key in keys})
        return batch

    def invert_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        for key in keys:
            steps = [inverse_step(p[key]) for p in params]
            _resample_key(batch, key, [steps], self.mode or "nearest", False, "zeros", self.label_mode,
                          self.padding_value)
        return batch


def make_step(in_shape, in_affine, out_shape, voxel_map, out_affine=None) -> dict:
    """Build the JSON-friendly step record of one sample and key (world-preserving by default)."""
    in_affine = np.asarray(in_affine, dtype=np.float64)
    voxel_map = np.asarray(voxel_map, dtype=np.float64)
    if out_affine is None:
        out_affine = in_affine @ voxel_map
    return {
        "in_shape": [int(s) for s in in_shape],
        "in_affine": in_affine.tolist(),
        "out_shape": [int(s) for s in out_shape],
        "out_affine": np.asarray(out_affine, dtype=np.float64).tolist(),
        "voxel_map": voxel_map.tolist(),
    }


def inverse_step(step: Mapping) -> dict:
    """The step that maps data on ``step``'s output grid back onto its input grid.

    An elastic step's inverse keeps its control points and is marked ``"inverse"``: its field
    is the fixed-point inverse of theirs (:func:`~gpuprep.functional.warp.invert_displacement`).
    """
    inverse = make_step(step["out_shape"], step["out_affine"], step["in_shape"],
                        np.linalg.inv(np.asarray(step["voxel_map"])), out_affine=step["in_affine"])
    if "displacement" in step:
        inverse["displacement"] = step["displacement"]
        inverse["inverse"] = not step.get("inverse", False)
    return inverse


def current_grids(batch: Mapping, keys: Sequence[str]) -> dict[str, Grid]:
    """The grid ``(shape, affines [B, 4, 4])`` of each key of a batch.

    A key without metadata raises :class:`~gpuprep.errors.MissingKeyError` saying how to give it some.
    """
    return {k: (tuple(int(s) for s in batch[k].shape[-3:]), get_meta(batch, k)["affine"].numpy()) for k in keys}


def validate_mode(mode: str, owner: str) -> str:
    """Check an interpolation mode argument."""
    if mode not in MODES:
        raise ConfigError(f"{owner}: mode must be one of {MODES}, got {short_repr(mode)}")
    return mode


def apply_fused(
    transforms: Sequence[SpatialTransform], data: Mapping, recorded: Sequence[tuple] | None = None
) -> dict:
    """Apply consecutive spatial transforms with a single resampling per key.

    Each transform plans its step on the grid the previous one would have produced; the maps
    are multiplied, and the data are resampled once with the highest interpolation order of the
    chain (anti-aliased if any step asks for it). Every transform still appends its own record,
    so the history is the same as without fusion. The records of ``n > 1`` steps resampled
    together are marked ``"fused": {"index": i, "count": n}``, so that :func:`gpuprep.replay` can
    resample them together again. Steps that pad intensity images with different values are not
    fused with each other (see :func:`fusable_runs`).

    Parameters
    ----------
    transforms:
        The spatial transforms of the run, in order.
    data:
        A sample or a batch.
    recorded:
        For replay: per transform, ``(keys, params, extras)`` from its history records (one params
        dict and one dict of other record fields per sample); nothing is planned or drawn then,
        and the transforms are resampled together as they were (their records say so).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 6, 6, 6)})
    >>> out = apply_fused([gp.Flip("image", 0), gp.Resample("image", 2.0)], s)
    >>> [r["fused"] for r in gp.get_history(out)]
    [{'index': 0, 'count': 2}, {'index': 1, 'count': 2}]
    """
    if recorded is None:
        runs = fusable_runs(transforms)
        if len(runs) > 1:
            for run in runs:
                data = _apply_fused_run(run, data) if len(run) > 1 else run[0](data)
            return data
    return _apply_fused_run(transforms, data, recorded)


def _apply_fused_run(
    transforms: Sequence[SpatialTransform], data: Mapping, recorded: Sequence[tuple] | None = None
) -> dict:
    if recorded is not None and len(recorded) != len(transforms):
        raise TransformError(f"apply_fused: got {len(recorded)} recorded steps for {len(transforms)} transforms")
    if recorded is None:
        keys_present = [t._present_keys(data) for t in transforms]
    else:
        keys_present = [list(keys) for keys, _, _ in recorded]
    all_keys = list(dict.fromkeys(k for keys in keys_present for k in keys))
    if not all_keys:
        return dict(data)
    data = adopt_foreign(data, all_keys, "apply_fused")
    single = not (data[all_keys[0]].ndim == 5)
    batch = collate([data]) if single else dict(data)
    grids = current_grids(batch, [*all_keys, *image_keys(batch)])
    chains: dict[str, list[tuple[SpatialTransform, list[dict]]]] = {k: [] for k in all_keys}
    planned = []
    for position, (transform, keys) in enumerate(zip(transforms, keys_present)):
        if not keys:
            continue
        if recorded is None:
            params = transform.plan(grids, batch, keys)
            extras = transform.record_extras(len(params))
        else:
            _, params, extras = recorded[position]
        planned.append((transform, keys, params, extras))
        for key in keys:
            steps = [p[key] for p in params]
            grids[key] = (tuple(steps[0]["out_shape"]), np.stack([np.asarray(s["out_affine"]) for s in steps]))
            chains[key].append((transform, steps))
    with shared_grids():
        _resample_chains(batch, chains)
    for index, (transform, keys, params, extras) in enumerate(planned):
        if recorded is None and len(planned) > 1:
            extras = [{**extra, "fused": {"index": index, "count": len(planned)}} for extra in extras]
        batch = transform._record(batch, keys, params, extras)
    return sync_monai_meta_dicts(decollate(batch)[0] if single else batch)


def _resample_chains(batch: dict, chains: dict) -> None:
    """Resample each key once through its chain of steps (the product of their maps)."""
    for key, chain in chains.items():
        if not chain:
            continue
        # Steps that move voxel centres onto voxel centres need no interpolation of their own.
        modes = [t.mode or "nearest" for t, steps in chain if not _is_exact(steps)]
        mode = max(modes, key=_MODE_ORDER.__getitem__) if modes else "nearest"
        anti_aliasing = any(t.anti_aliasing for t, _ in chain)
        wishes = [padding_wish(t) for t, _ in chain if padding_wish(t) is not None]
        padding = "border" if wishes and all(w == "border" for w in wishes) else "zeros"
        values = [w for w in wishes if w != "border"]
        label_mode = "onehot" if any(t.label_mode == "onehot" for t, _ in chain) else "nearest"
        _resample_key(batch, key, [steps for _, steps in chain], mode, anti_aliasing, padding, label_mode,
                      values[0] if values else 0.0)


def _is_exact(steps: list[dict]) -> bool:
    return all(is_lattice_map(np.asarray(s["voxel_map"])) and "displacement" not in s for s in steps)


def _resample_key(batch, key, chain, mode, anti_aliasing, padding_mode, label_mode="nearest",
                  padding_value: float | str = 0.0) -> None:
    """Resample ``batch[key]`` through ``chain`` (per step, the list of per-sample steps); set its affine."""
    last = chain[-1]
    shapes = {tuple(s["out_shape"]) for s in last}
    if len(shapes) > 1:
        raise TransformError(
            f"key {key!r}: the samples of this batch would get different shapes {sorted(shapes)}; "
            "resample them one by one or to a common grid"
        )
    batch[key] = resample_steps(batch[key], chain, shapes.pop(), mode, anti_aliasing, padding_mode, label_mode,
                                kind=get_kind(batch, key), padding_value=padding_value)
    replace_meta(batch, key, affine=torch.from_numpy(np.stack([np.asarray(s["out_affine"]) for s in last])))


def resample_steps(volume, chain, out_shape, mode, anti_aliasing=False, padding_mode="zeros", label_mode="nearest",
                   kind: str | None = None, padding_value: float | str = 0.0):
    """Resample ``[B, C, D, H, W]`` once through a chain of steps (the list of per-sample steps of each).

    Affine steps are multiplied into one map; a chain with an elastic step (one at most) is
    resampled through its displacement field between the maps before and after it
    (:func:`gpuprep.functional.warp.warp`). ``kind`` (``"image"`` or ``"label"``; None: the
    dtype rule) decides how: images with ``mode`` (integer ones become float32 unless ``mode`` is
    ``"nearest"``) padded with ``padding_value``, labels by nearest neighbour or one-hot, padded with 0.
    """
    size = len(chain[0])
    warped = [position for position, steps in enumerate(chain) if any("displacement" in s for s in steps)]
    if len(warped) > 1:
        raise TransformError("one resampling can apply one elastic step: Compose splits its runs so, and gp.invert "
                             "cannot yet undo a history with two elastic steps for one key")

    def product(part: list, index: int) -> np.ndarray:
        return np.linalg.multi_dot([np.eye(4), np.eye(4)] + [np.asarray(steps[index]["voxel_map"]) for steps in part])

    if not warped:
        maps = np.stack([product(chain, i) for i in range(size)])

        def sampler(data, how, fill=0.0):
            return resample(data, maps, out_shape, how, False, padding_mode, fill)

        lattice = all(is_lattice_map(m) for m in maps)
    else:
        position = warped[0]
        pre = np.stack([product(chain[: position + 1], i) for i in range(size)])
        post = np.stack([product(chain[position + 1:], i) for i in range(size)])
        maps, lattice = pre @ post, False
        if mode == "cubic":
            raise TransformError("cubic interpolation cannot be fused with an elastic step; use mode='linear'")
        steps = chain[position]
        field_key = ("field", pre.tobytes(), post.tobytes(), repr([s.get("displacement") for s in steps]),
                     repr([s.get("inverse") for s in steps]), str(volume.device))
        field = cached(field_key, lambda: displacement_field(steps, volume.device))

        def sampler(data, how, fill=0.0):
            if isinstance(fill, torch.Tensor) or fill != 0.0:  # a constant c outside: warp(x - c) + c
                return warp(data - fill, pre, field, post, out_shape, how, padding_mode, cache_key=field_key) + fill
            return warp(data, pre, field, post, out_shape, how, padding_mode, cache_key=field_key)

    if (kind or dtype_kind(volume)) != LABEL:
        if not volume.is_floating_point() and mode != "nearest":
            volume = volume.float()  # an interpolated integer image (CT, MRI) becomes float32
        fill = padding_fill(volume, padding_value) if padding_mode == "zeros" else 0.0
        if not warped:
            return resample(volume, maps, out_shape, mode, anti_aliasing, padding_mode, fill)
        return sampler(antialias(volume, maps) if anti_aliasing else volume, mode, fill)
    if label_mode == "onehot" and mode != "nearest" and not lattice:
        return resample_labels(volume, maps, out_shape, "linear", padding_mode,
                               sampler=lambda mask: sampler(mask, "linear"))
    return sampler(volume, "nearest")


def displacement_field(steps: list[dict], device) -> torch.Tensor:
    """The dense field ``[B, 3, D, H, W]`` (voxels) of an elastic step; zero for samples it skipped."""
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
