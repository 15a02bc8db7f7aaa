"""The data model: samples, batches, their spatial metadata and history.

A **sample** is a plain ``dict``. Each image entry is a tensor ``[C, D, H, W]`` (floating point
for intensity images, an integer dtype for label maps) and has a metadata dict beside it under
``f"{key}_meta"``::

    {
        "image": tensor [C, D, H, W],
        "image_meta": {
            "affine": float64 tensor [4, 4],           # voxel (i, j, k) -> world RAS+ mm
            "original_affine": float64 tensor [4, 4],  # the affine as read from the file
            "original_shape": int64 tensor [3],        # spatial shape as read from the file
            "filename": str or None,                   # where it came from
            "kind": "image" or "label",                # intensities, or a label map
        },
        "history": [record, ...],                      # what was done, in order
    }

The spatial axes ``D, H, W`` are the file's voxel axes ``i, j, k`` in that order, so the affine
applies to tensor indices directly. Metadata always stays on the CPU (it is tiny), whatever the
device of the image, so transforms can do their matrix arithmetic without touching the GPU.

A **batch** has the same keys with a leading batch dimension: images ``[B, C, D, H, W]``,
affines ``[B, 4, 4]``, filenames a list of ``B`` strings and ``history`` a list of ``B`` lists.
:func:`collate` and :func:`decollate` turn one into the other.

Every image key has a **kind**: ``"image"`` (intensities: interpolated linearly, padded with a
background value, normalised) or ``"label"`` (a label map: nearest-neighbour or one-hot
resampling, padded with 0, never touched by intensity transforms). ``LoadImage(..., labels=...)``
declares it when loading; :func:`make_sample` takes ``labels=``; :func:`set_kind` sets it later.
Metadata without a kind (a dict built by hand) follows the **dtype rule** of :func:`get_kind`:
floating-point tensors are images, integer and bool tensors labels.

Users should go through the accessors (:func:`get_affine`, :func:`get_meta`, :func:`get_kind`,
:func:`get_history`) rather than the layout, which may grow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

# The batch operations live in gpuprep.batching; re-exported here, where the data model is.
from .batching import batch_size as batch_size
from .batching import collate as collate
from .batching import decollate as decollate
from .batching import merge as merge
from .batching import select as select
from .errors import MissingKeyError, TransformError
from .metadata import HISTORY_KEY as HISTORY_KEY
from .metadata import IMAGE as IMAGE
from .metadata import KINDS as KINDS
from .metadata import LABEL as LABEL
from .metadata import META_SUFFIX as META_SUFFIX
from .metadata import _as_affine
from .metadata import check_kind as check_kind
from .metadata import image_keys as image_keys
from .metadata import make_meta as make_meta
from .metadata import meta_key as meta_key


def dtype_kind(tensor: torch.Tensor) -> str:
    """The kind the dtype rule gives a tensor: ``"image"`` for floating point, ``"label"`` otherwise."""
    return IMAGE if tensor.is_floating_point() else LABEL


def make_sample(
    images: Mapping[str, torch.Tensor],
    affine: Any = None,
    *,
    filenames: Mapping[str, str] | None = None,
    labels: str | Sequence[str] | None = None,
) -> dict:
    """Wrap tensors ``[C, D, H, W]`` into a sample with metadata and an empty history.

    Parameters
    ----------
    images:
        Mapping from key to a channel-first tensor ``[C, D, H, W]``. A MONAI ``MetaTensor`` is
        stored as a plain tensor and brings its own affine, file name and original grid (see
        :func:`gpuprep.foreign.adopt_foreign`).
    affine:
        One affine for all keys, or a mapping from key to affine; identity if None (a MetaTensor's
        own affine then). An affine given for a MetaTensor must agree with its own.
    filenames:
        Optional mapping from key to the source path.
    labels:
        The keys that are label maps; every other key is an intensity image. None: the dtype
        rule (integer and bool tensors are labels, floating-point tensors images), so declare an
        int16 CT or MRI with ``labels=[]`` or the keys that really are labels.

    Example
    -------
    >>> s = make_sample({"image": torch.zeros(1, 4, 4, 4, dtype=torch.int16)}, labels=[])
    >>> sorted(s), get_kind(s, "image")
    (['history', 'image', 'image_meta'], 'image')
    """
    if labels is not None:
        labels = [labels] if isinstance(labels, str) else list(labels)
        unknown = sorted(set(labels) - set(images))
        if unknown:
            raise TransformError(f"make_sample: labels {unknown} are not among the image keys {sorted(images)}")
    sample: dict = {}
    from .foreign import check_affines_agree, is_metatensor, metatensor_to_meta, sync_monai_meta_dicts

    for key, tensor in images.items():
        foreign = None
        key_affine = affine.get(key) if isinstance(affine, Mapping) else affine
        if is_metatensor(tensor):
            tensor, foreign = metatensor_to_meta(tensor, key, "make_sample")
            if key_affine is not None:
                check_affines_agree(foreign["affine"], _as_affine(key_affine), tensor.shape[1:], key, "make_sample")
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise TransformError(f"make_sample: images[{key!r}] must be a tensor [C, D, H, W], got {shape}")
        filename = (filenames or {}).get(key)
        sample[key] = tensor
        kind = dtype_kind(tensor) if labels is None else LABEL if key in labels else IMAGE
        if foreign is None:
            meta = make_meta(key_affine, filename=filename, spatial_shape=tensor.shape[1:], kind=kind)
        else:
            kind = foreign.get("kind", kind) if labels is None else kind
            meta = {**foreign, "filename": filename or foreign["filename"], "kind": kind}
        sample[meta_key(key)] = meta
    sample[HISTORY_KEY] = []
    return sync_monai_meta_dicts(sample)


def get_meta(sample: Mapping, key: str) -> dict:
    """Return the metadata dict of image ``key`` (see the module docstring for its fields).

    Raises :class:`~gpuprep.errors.MissingKeyError` naming the available image keys when the
    sample has no metadata for ``key``.
    """
    try:
        return sample[meta_key(key)]
    except KeyError:
        from .foreign import missing_meta_message

        raise MissingKeyError(missing_meta_message(sample, key)) from None


def copy_meta(meta: Any, kind: str | None = None) -> Any:
    """A copy of a metadata dict deep enough that a new key never shares a mutable value with it.

    Used when a transform adds a key on the grid of another (a mask, a prediction, a synthetic
    image): tensors are cloned, dicts and lists copied, other values shared. ``kind`` sets the
    new key's kind (``"image"`` or ``"label"``; one per sample for batched metadata), since a
    mask made from an image is a label map and an image made from a label map is an image.

    Example
    -------
    >>> meta = {"affine": torch.eye(4), "filename": "a.nii.gz", "kind": "image"}
    >>> copy_meta(meta)["affine"] is meta["affine"], copy_meta(meta, kind="label")["kind"]
    (False, 'label')
    """
    if isinstance(meta, Mapping):
        copied = {k: copy_meta(v) for k, v in meta.items()}
        if kind is not None:
            affine = copied.get("affine")
            checked = check_kind(kind, "copy_meta: kind")
            batched = isinstance(affine, torch.Tensor) and affine.ndim == 3
            copied["kind"] = [checked] * len(affine) if isinstance(affine, torch.Tensor) and batched else checked
        return copied
    if isinstance(meta, torch.Tensor):
        return meta.clone()
    if isinstance(meta, list):
        return [copy_meta(v) for v in meta]
    return meta


def get_affine(sample: Mapping, key: str) -> torch.Tensor:
    """Return the voxel-to-world affine of image ``key``: float64 ``[4, 4]`` (``[B, 4, 4]`` for a batch).

    Example
    -------
    >>> s = make_sample({"image": torch.zeros(1, 2, 2, 2)}, affine=torch.diag(torch.tensor([2., 2, 2, 1])))
    >>> get_affine(s, "image")[0, 0].item()
    2.0
    """
    return get_meta(sample, key)["affine"]


def get_kind(sample: Mapping, key: str) -> str:
    """Return the kind of image ``key``: ``"image"`` (intensities) or ``"label"`` (a label map).

    The kind is read from the metadata (for a batch, every sample must agree). Metadata without
    one follows the dtype rule: floating point is an image, integer or bool a label.

    Example
    -------
    >>> s = make_sample({"ct": torch.zeros(1, 2, 2, 2, dtype=torch.int16)}, labels=[])
    >>> get_kind(s, "ct"), get_kind(set_kind(s, "ct", "label"), "ct")
    ('image', 'label')
    """
    kind = get_meta(sample, key).get("kind")
    if kind is None:
        return dtype_kind(sample[key])
    if isinstance(kind, list):  # a batch: one entry per sample
        kinds = set(kind)
        if len(kinds) != 1:
            raise TransformError(f"key {key!r} is a label map in some samples of the batch and an image in others")
        kind = kinds.pop()
    return check_kind(kind, f"the kind of key {key!r}")


def is_label(sample: Mapping, key: str) -> bool:
    """Tell whether image ``key`` is a label map (see :func:`get_kind`)."""
    return get_kind(sample, key) == LABEL


def set_kind(sample: Mapping, key: str, kind: str) -> dict:
    """Return a new sample (or batch) in which image ``key`` has ``kind`` (the input is not changed).

    Example
    -------
    >>> s = set_kind(make_sample({"seg": torch.zeros(1, 2, 2, 2)}), "seg", "label")
    >>> get_kind(s, "seg")
    'label'
    """
    check_kind(kind, "set_kind: kind")
    meta = get_meta(sample, key)
    value: Any = [kind] * len(sample[key]) if is_batch(sample, key) else kind
    return {**sample, meta_key(key): {**meta, "kind": value}}


def get_history(sample: Mapping) -> list:
    """Return the history: a list of records (a list of ``B`` such lists for a batch).

    Each record is a dict ``{"name", "keys", "config", "params"}`` made of JSON types; a random
    step's record adds ``"stream"`` (the seed, epoch and sample index it drew from), and the
    records of spatial steps resampled together add ``"fused": {"index", "count"}``.
    """
    return sample.get(HISTORY_KEY, [])


def is_batch(sample: Mapping, key: str) -> bool:
    """Tell whether image ``key`` is batched (``[B, C, D, H, W]``) or single (``[C, D, H, W]``)."""
    tensor = sample[key]
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (4, 5):
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise TransformError(
            f"key {key!r} must be a tensor [C, D, H, W] or a batch [B, C, D, H, W], got {shape}"
        )
    return tensor.ndim == 5
