"""The layouts of history records and spatial steps, defined once, and their JSON form.

Every transform call appends one **record** per sample to ``sample["history"]``
(:func:`gpuprep.get_history`); records are plain JSON dicts, so a history can be saved in a
sidecar, replayed (:func:`gpuprep.replay`) and inverted (:func:`gpuprep.invert`). The layouts:

``Record``
    ``{"name": class name, "keys": [...], "config": constructor arguments, "params": {...}}``,
    plus ``"stream"`` for a random transform (the :class:`Stream` its sample drew from) and
    ``"fused"`` (a :class:`Fused`) for spatial steps resampled together.

``params`` of a transform, by family:

- a **spatial** transform: ``{key: Step}``, one :class:`Step` per key it moved;
- a **random spatial** transform: ``{"draw": RandomParams, key: Step, ...}``: the drawn numbers
  and the step they gave each key (an identity step for a sample that ``p`` skipped);
- a **random** (intensity, artefact ...) transform: a :class:`RandomParams`,
  ``{"apply": True, **drawn numbers}``, or just ``{"apply": False}`` when ``p`` skipped it;
- ``LoadImage``: ``{key: {"path": ..., ...}}``, what was read;
- any other transform: its own JSON-friendly numbers (often ``{}``).

A :class:`Step` maps one sample's key from an input grid to an output grid::

    {"in_shape": [D, H, W], "in_affine": 4x4, "out_shape": [...], "out_affine": 4x4, "voxel_map": 4x4}

``voxel_map`` maps output voxel indices to input ones (see :mod:`gpuprep.functional.grid`). A
step that also moves voxels by a dense field names the field in one extra entry (see
:data:`WARP_ENTRIES`): an elastic step's ``"displacement"`` holds its B-spline control-point
displacements (voxels of the input grid), and ``"inverse": True`` marks the inverse of such a step.

Example
-------
>>> import numpy as np
>>> step = make_step((4, 4, 4), np.eye(4), (2, 2, 2), np.diag([2.0, 2.0, 2.0, 1.0]))
>>> step["out_affine"][0][0], inverse_step(step)["out_shape"]
(2.0, [4, 4, 4])
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

__all__ = [
    "WARP_ENTRIES", "Fused", "RandomParams", "Record", "Step", "Stream", "applied_samples", "inverse_step",
    "is_skipped", "make_record", "make_step", "random_params", "to_json", "warp_entry",
]


class _StepGrids(TypedDict):
    in_shape: list[int]
    in_affine: list[list[float]]
    out_shape: list[int]
    out_affine: list[list[float]]
    voxel_map: list[list[float]]


class Step(_StepGrids, total=False):
    """One sample's and key's spatial step; a warping step adds its field entry (:data:`WARP_ENTRIES`)."""

    displacement: list  # B-spline control-point displacements [3, nD, nH, nW], voxels of the input grid
    velocity: dict  # RegisterToReference (deformable): lattice [3, cD, cH, cW] mm, control_spacing_mm, squaring_steps
    inverse: bool  # the step undoes the warp named by its field entry


#: The entries that make a step a *warp* (voxels moved by a dense field besides ``voxel_map``),
#: with what each holds. :mod:`gpuprep.transforms.warp_fields` builds the field of each kind for
#: the fusion engine; a new kind of step (say, a field from a registration optimiser) adds its
#: entry here and its builder there.
WARP_ENTRIES = {
    "displacement": "B-spline control-point displacements [3, nD, nH, nW] in voxels (RandElastic)",
    "velocity": "a registration's stationary velocity: B-spline lattice (mm), control spacing, squaring steps",
}


class Stream(TypedDict, total=False):
    """The seeded stream a random transform's sample drew from (``patch_index`` for patches)."""

    seed: int
    epoch: int
    sample_index: int
    patch_index: int


class Fused(TypedDict):
    """Marks the ``index``-th of ``count`` spatial steps that were resampled together."""

    index: int
    count: int


class _RecordFields(TypedDict):
    name: str
    keys: list[str]
    config: dict[str, Any]
    params: dict[str, Any]


class Record(_RecordFields, total=False):
    """One transform call's record for one sample (see the module docstring for ``params``)."""

    stream: Stream
    fused: Fused


class RandomParams(TypedDict, total=False):
    """A random transform's parameters: ``apply`` and, when applied, the drawn numbers beside it."""

    apply: bool


def make_step(in_shape: Sequence[int], in_affine: Any, out_shape: Sequence[int], voxel_map: Any,
              out_affine: Any = None) -> Step:
    """Build the JSON-friendly step of one sample and key.

    Parameters
    ----------
    in_shape, in_affine:
        The input grid: spatial shape and 4x4 voxel-to-world (RAS mm) affine.
    out_shape:
        The output grid's spatial shape.
    voxel_map:
        4x4 map from output voxel indices to input voxel indices.
    out_affine:
        The output grid's affine; default ``in_affine @ voxel_map``, which keeps every voxel's
        world position (a resampling); augmentation that moves the content passes ``in_affine``.

    Example
    -------
    >>> make_step((2, 2, 2), np.eye(4), (2, 2, 2), np.eye(4))["out_shape"]
    [2, 2, 2]
    """
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


def inverse_step(step: Mapping) -> Step:
    """The step that maps data on ``step``'s output grid back onto its input grid.

    A warping step's inverse keeps its field entry and flips ``"inverse"``: its field is the
    fixed-point inverse of the forward one (:func:`~gpuprep.functional.warp.invert_displacement`).

    Example
    -------
    >>> step = make_step((4, 4, 4), np.eye(4), (2, 2, 2), np.diag([2.0, 2.0, 2.0, 1.0]))
    >>> inverse_step(step)["voxel_map"][0][0]
    0.5
    """
    inverse = make_step(step["out_shape"], step["out_affine"], step["in_shape"],
                        np.linalg.inv(np.asarray(step["voxel_map"])), out_affine=step["in_affine"])
    entry = warp_entry(step)
    if entry is not None:
        inverse[entry] = step[entry]  # type: ignore[literal-required]  # an entry of WARP_ENTRIES
        inverse["inverse"] = not step.get("inverse", False)
    return inverse


def warp_entry(step: Mapping) -> str | None:
    """The :data:`WARP_ENTRIES` entry a step carries, or None for a step that is a voxel map only.

    Example
    -------
    >>> warp_entry({"voxel_map": np.eye(4).tolist()}) is None
    True
    """
    return next((entry for entry in WARP_ENTRIES if entry in step), None)


def make_record(name: str, keys: Sequence[str], config: dict, params: dict, **extras: Any) -> Record:
    """One record: the transform's name, keys, JSON config and parameters, then ``stream``/``fused``.

    Example
    -------
    >>> make_record("Flip", ["image"], {"axes": 0}, {}, fused={"index": 0, "count": 2})["fused"]
    {'index': 0, 'count': 2}
    """
    record: dict[str, Any] = {"name": name, "keys": list(keys), "config": config, "params": params, **extras}
    return record  # type: ignore[return-value]  # extras are Record's optional fields


def random_params(apply: bool, drawn: Mapping) -> dict[str, Any]:
    """A random transform's parameters for one sample: ``{"apply": True, **drawn}`` or ``{"apply": False}``.

    The layout of :class:`RandomParams`, as a plain dict (its drawn numbers are the transform's own).

    Example
    -------
    >>> random_params(True, {"gamma": 1.5}), random_params(False, {"gamma": 1.5})
    ({'apply': True, 'gamma': 1.5}, {'apply': False})
    """
    return {"apply": True, **drawn} if apply else {"apply": False}


def is_skipped(params: Mapping) -> bool:
    """Whether a random transform's parameters say that ``p`` skipped the sample.

    Example
    -------
    >>> is_skipped({"apply": False}), is_skipped({"apply": True, "gamma": 1.5}), is_skipped({})
    (True, False, False)
    """
    return params.get("apply") is False


def applied_samples(params: Sequence[Mapping]) -> list[int]:
    """The indices of the samples whose random parameters say ``apply`` (the others were skipped by ``p``).

    Example
    -------
    >>> applied_samples([{"apply": True, "gamma": 1.5}, {"apply": False}, {"apply": True, "gamma": 0.8}])
    [0, 2]
    """
    return [index for index, p in enumerate(params) if p.get("apply")]


def to_json(value: Any) -> Any:
    """Convert tensors, NumPy values, paths and tuples to JSON types; non-finite floats to None.

    Example
    -------
    >>> to_json({"a": (np.float32(1.5), float("nan")), "b": np.arange(2)})
    {'a': [1.5, None], 'b': [0, 1]}
    """
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # tensors and NumPy arrays/scalars
        return to_json(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)  # e.g. a torch.dtype
