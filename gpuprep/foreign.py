"""Adopting tensors that carry their own geometry (MONAI ``MetaTensor``) into gpuprep samples.

A MONAI ``MetaTensor`` keeps its affine on the tensor (``.affine``, ``.meta``); gpuprep keeps it in
the metadata beside the tensor (:mod:`gpuprep.sample`). If a gpuprep transform kept the
``MetaTensor`` class, its ``.affine`` would stay the old one while the voxels moved, and MONAI's
writers would then save the scan flipped or shifted. So every transform first **adopts** foreign
tensors (:func:`adopt_foreign`): the affine (converted to RAS+ when MONAI's ``space`` is LPS),
the original affine and shape and the file name go into gpuprep metadata, and the value becomes a
plain ``torch.Tensor``. Nothing downstream can then hold a stale affine. MONAI's separate
``f"{key}_meta_dict"`` (``LoadImaged(image_only=False)``) is dropped for the same reason, and every
transform writes it afresh from the new geometry for the keys that came from MONAI
(:func:`sync_monai_meta_dicts`), so MONAI's ``SaveImaged`` writes what gpuprep computed.

When gpuprep metadata already exists for a key whose value is a ``MetaTensor`` (a MONAI transform
ran on a gpuprep sample), the two affines must agree to within :data:`AFFINE_TOLERANCE_MM` at the
corners of the grid; otherwise the sample is refused, since one of them is wrong and nothing
tells which (convert with ``gp.to_monai`` before MONAI transforms and ``gp.from_monai`` after).

MetaTensors are recognised by duck typing, so MONAI is not imported here.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, overload

import numpy as np
import torch

from .errors import TransformError
from .metadata import HISTORY_KEY, check_kind, image_keys, make_meta, meta_key

#: The largest distance (mm) between two affines' world positions of a grid corner that still agree.
AFFINE_TOLERANCE_MM = 1e-4
#: The metadata field in which :func:`gpuprep.to_monai` keeps a key's kind on the MetaTensor.
MONAI_KIND_FIELD = "gpuprep_kind"
#: MONAI's default postfix of the separate metadata dict of ``LoadImaged(image_only=False)``.
MONAI_META_DICT_POSTFIX = "_meta_dict"
#: The metadata field that marks a key adopted from a MetaTensor: its MONAI meta dict is kept in step.
FROM_MONAI_FIELD = "from_monai"
_LPS_TO_RAS = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))


def missing_meta_message(sample: Mapping, key: str) -> str:
    """Explain that ``sample[key]`` has no metadata (no affine) and how to give it some."""
    if key in sample and isinstance(sample[key], torch.Tensor):
        return (
            f"key {key!r} holds a tensor without gpuprep metadata (no {meta_key(key)!r} entry with its affine); "
            f"wrap it with gp.make_sample({{{key!r}: tensor}}, affine=...), pass a MONAI MetaTensor "
            f"(e.g. LoadImaged output), or convert a MONAI dict with gp.from_monai(d) or a TorchIO Subject "
            f"with gp.from_torchio(subject); image keys with metadata: {image_keys(sample)}"
        )
    return f"sample has no metadata for key {key!r}; image keys present: {image_keys(sample)}"


def is_metatensor(value: Any) -> bool:
    """Tell whether ``value`` is a tensor that carries its own affine (a MONAI ``MetaTensor``).

    Recognised by duck typing, so MONAI is not imported.

    Example
    -------
    >>> is_metatensor(torch.zeros(1, 2, 2, 2))
    False
    """
    return isinstance(value, torch.Tensor) and all(hasattr(value, n) for n in ("affine", "meta", "as_tensor"))


def adopt_foreign(data: Mapping, keys: Sequence[str], owner: str = "gpuprep") -> Mapping:
    """Return ``data`` with the MetaTensors among ``keys`` turned into plain tensors with gpuprep metadata.

    ``data`` itself is returned when it holds no MetaTensor; otherwise a new dict
    (the input is never changed). See the module docstring for what is adopted and refused.

    Parameters
    ----------
    data:
        A sample or batch, e.g. the output of MONAI's ``LoadImaged`` (with or without
        ``EnsureChannelFirstd``: a volume without a channel axis gets one).
    keys:
        The keys to adopt (a transform's keys); missing keys are skipped. Every other MetaTensor
        value of ``data`` that looks like a volume (3 to 5 dimensions) is adopted too.
    owner:
        Who asks (a transform's name), for error messages.

    Example
    -------
    >>> from monai.data import MetaTensor
    >>> mt = MetaTensor(torch.zeros(1, 2, 2, 2), affine=torch.diag(torch.tensor([2.0, 2, 2, 1])))
    >>> out = adopt_foreign({"image": mt}, ["image"])
    >>> type(out["image"]).__name__, out["image_meta"]["affine"][0, 0].item()
    ('Tensor', 2.0)
    """
    foreign = [k for k in keys if k in data and is_metatensor(data[k])]
    # The sample's other MetaTensor volumes too (a mask a transform reads by name, a key the next step saves).
    foreign += [k for k, v in data.items() if k not in foreign and is_metatensor(v) and v.ndim in (3, 4, 5)]
    if not foreign:
        return data
    out = dict(data)
    for key in foreign:
        tensor, meta = metatensor_to_meta(out[key], key, owner)
        existing = out.get(meta_key(key))
        if existing is not None:
            check_affines_agree(existing["affine"], meta["affine"], tensor.shape[-3:], key, owner)
            meta = existing
        out[key] = tensor
        out[meta_key(key)] = meta
        out.pop(f"{key}{MONAI_META_DICT_POSTFIX}", None)
        if HISTORY_KEY not in out:
            out[HISTORY_KEY] = [[] for _ in tensor] if tensor.ndim == 5 else []
    return out


def metatensor_to_meta(value: Any, key: str, owner: str = "gpuprep") -> tuple[torch.Tensor, dict]:
    """Split a MetaTensor into a plain channel-first tensor and gpuprep metadata (RAS+ affines).

    A batch (``is_batch``) gives ``[B, C, D, H, W]`` and batched metadata. The kind is the one
    :func:`gpuprep.to_monai` stored, if any (else left out: the dtype rule applies).
    """
    source = value.meta
    batched = bool(getattr(value, "is_batch", False))
    tensor = value.as_tensor()
    if tensor.ndim == (4 if batched else 3):  # LoadImaged without EnsureChannelFirstd: no channel axis
        tensor = tensor.unsqueeze(1 if batched else 0)
    expected = "[B, C, D, H, W]" if batched else "[C, D, H, W]"
    spatial = source.get("spatial_shape")
    if tensor.ndim != len(expected.split(",")) or _channel_last(tensor, spatial, batched):
        raise TransformError(f"{owner}: key {key!r} holds a MetaTensor of shape {tuple(value.shape)}; "
                             f"gpuprep needs {expected} (use MONAI's EnsureChannelFirstd for channel-last data)")
    to_ras = _lps_to_ras_matrix(source.get("space"), key, owner)
    affine = to_ras @ torch.as_tensor(value.affine, dtype=torch.float64).detach().cpu()
    original = source.get("original_affine")
    original = affine if original is None else to_ras @ torch.as_tensor(np.asarray(original), dtype=torch.float64)
    shape = torch.as_tensor(np.asarray(spatial if spatial is not None else tensor.shape[-3:]), dtype=torch.int64)
    filename = source.get("filename_or_obj")
    kind = source.get(MONAI_KIND_FIELD)
    if not batched:
        _check_shapes(affine, original, shape, (4, 4), (3,), key, owner)
        meta = make_meta(affine, filename=_as_name(filename), original_affine=original,
                         original_shape=shape.tolist(), kind=kind)
        return tensor, {**meta, FROM_MONAI_FIELD: True}
    size = tensor.shape[0]
    affine, original, shape = (_per_sample(x, size) for x in (affine, original, shape))
    _check_shapes(affine, original, shape, (size, 4, 4), (size, 3), key, owner)
    names = filename if isinstance(filename, (list, tuple)) else [filename] * size
    meta = {"affine": affine.clone(), "original_affine": original.clone(), "original_shape": shape.clone(),
            "filename": [_as_name(n) for n in names], FROM_MONAI_FIELD: [True] * size}
    if kind is not None:
        kinds = list(kind) if isinstance(kind, (list, tuple)) else [kind] * size
        meta["kind"] = [check_kind(k, f"{owner}: the kind of key {key!r}") for k in kinds]
    return tensor, meta


def check_affines_agree(ours: Any, theirs: Any, shape: Sequence[int], key: str, owner: str = "gpuprep") -> None:
    """Raise :class:`TransformError` if two affines put a corner of a grid of ``shape`` more than 1e-4 mm apart.

    Example
    -------
    >>> check_affines_agree(torch.eye(4), torch.eye(4), (3, 3, 3), "image")
    """
    ours = torch.as_tensor(ours, dtype=torch.float64).reshape(-1, 4, 4)
    theirs = torch.as_tensor(theirs, dtype=torch.float64).reshape(-1, 4, 4)
    corners = torch.tensor([[*c, 1.0] for c in itertools.product(*[(0, int(n) - 1) for n in shape])],
                           dtype=torch.float64)
    distance = ((ours - theirs) @ corners.T)[:, :3].norm(dim=1).max().item()
    if distance > AFFINE_TOLERANCE_MM:
        raise TransformError(
            f"{owner}: key {key!r} is a MetaTensor whose affine disagrees with its gpuprep metadata by "
            f"{distance:.4g} mm at a corner of the grid (allowed {AFFINE_TOLERANCE_MM} mm): a transform outside "
            f"gpuprep moved the voxels or the affine without the other. Convert with gp.to_monai(sample) before "
            f"MONAI transforms and gp.from_monai(d) after them. MetaTensor affine:\n{theirs[0].numpy()}\n"
            f"gpuprep affine:\n{ours[0].numpy()}"
        )


def _channel_last(tensor: torch.Tensor, spatial_shape: Any, batched: bool) -> bool:
    """Tell whether a volume as MONAI's reader left it has its channels last (``[D, H, W, C]``)."""
    if spatial_shape is None or batched:
        return False
    spatial = [int(n) for n in np.asarray(spatial_shape).reshape(-1)]
    return list(tensor.shape[:3]) == spatial and list(tensor.shape[1:]) != spatial


def _lps_to_ras_matrix(space: Any, key: str, owner: str) -> torch.Tensor:
    spaces = {str(getattr(s, "value", s)).upper() for s in (space if isinstance(space, (list, tuple)) else [space])}
    if spaces <= {"RAS", "NONE"}:  # MONAI's default is RAS
        return torch.eye(4, dtype=torch.float64)
    if spaces == {"LPS"}:
        return _LPS_TO_RAS
    raise TransformError(f"{owner}: key {key!r} is a MetaTensor in space {sorted(spaces)}; expected 'RAS' or 'LPS'")


def _per_sample(value: torch.Tensor, size: int) -> torch.Tensor:
    """A batched field: one entry per sample (MONAI may keep a single one for the whole batch)."""
    single = value.ndim == 2 if value.shape[-2:] == (4, 4) else value.ndim == 1
    return value.unsqueeze(0).expand(size, *value.shape) if single else value


def _check_shapes(affine, original, shape, affine_shape, shape_shape, key: str, owner: str) -> None:
    found = (tuple(affine.shape), tuple(original.shape), tuple(shape.shape))
    if found != (affine_shape, affine_shape, shape_shape):
        raise TransformError(f"{owner}: key {key!r} is a MetaTensor whose affine, original_affine and "
                             f"spatial_shape have shapes {found}; expected {(affine_shape, affine_shape, shape_shape)}")


def _as_name(filename: Any) -> str | None:
    return None if filename is None else str(filename)


@overload
def sync_monai_meta_dicts(data: dict) -> dict: ...
@overload
def sync_monai_meta_dicts(data: Mapping) -> Mapping: ...
def sync_monai_meta_dicts(data: Mapping) -> Mapping:
    """Write MONAI's ``f"{key}_meta_dict"`` afresh for every key that came from a MONAI MetaTensor.

    gpuprep returns plain tensors (a MetaTensor's ``.affine`` would go stale), but MONAI's
    ``SaveImaged`` given a plain tensor reads the geometry from ``f"{key}_meta_dict"`` and, without
    one, writes an identity affine. So every transform's output carries, for the keys adopted from
    MONAI (marked ``"from_monai"`` in their metadata), a meta dict built from the current gpuprep
    metadata: the RAS affine, the original affine, the spatial shape and the source file, with
    ``space="RAS"``. ``data`` itself is returned when no key came from MONAI.

    Example
    -------
    >>> from monai.data import MetaTensor
    >>> mt = MetaTensor(torch.zeros(1, 2, 2, 2), affine=torch.diag(torch.tensor([2.0, 2, 2, 1])))
    >>> out = sync_monai_meta_dicts(adopt_foreign({"image": mt}, ["image"]))
    >>> out["image_meta_dict"]["affine"][0, 0].item(), out["image_meta_dict"]["space"]
    (2.0, 'RAS')
    """
    keys = [k for k in image_keys(data) if _from_monai(data[meta_key(k)].get(FROM_MONAI_FIELD))]
    if not keys:
        return data
    out = dict(data)
    for key in keys:
        meta = data[meta_key(key)]
        shape = torch.as_tensor(data[key].shape[-3:], dtype=torch.int64)
        entry = {"affine": meta["affine"].clone(), "original_affine": meta["original_affine"].clone(),
                 "spatial_shape": shape if meta["affine"].ndim == 2 else shape.expand(len(data[key]), 3).clone(),
                 "space": "RAS"}
        if meta.get("filename") is not None:
            entry["filename_or_obj"] = meta["filename"]
        out[f"{key}{MONAI_META_DICT_POSTFIX}"] = entry
    return out


def _from_monai(flag: Any) -> bool:
    return any(flag) if isinstance(flag, list) else bool(flag)
