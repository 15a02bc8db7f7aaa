"""The layout of a sample's metadata: the keys, the kinds and the per-image metadata dict.

The lowest part of the data model (:mod:`gpuprep.sample` re-exports every name), so that
:mod:`gpuprep.foreign` can build metadata without importing :mod:`gpuprep.sample`, which calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import TransformError

META_SUFFIX = "_meta"
HISTORY_KEY = "history"
#: The kind of an intensity image (MRI, CT in HU, PET, ...).
IMAGE = "image"
#: The kind of a label map (segmentation, mask, parcellation).
LABEL = "label"
KINDS = (IMAGE, LABEL)


def meta_key(key: str) -> str:
    """Return the dict key under which the metadata of image ``key`` lives.

    Example
    -------
    >>> meta_key("image")
    'image_meta'
    """
    return f"{key}{META_SUFFIX}"


def make_meta(
    affine: Any = None,
    *,
    filename: str | None = None,
    spatial_shape: Sequence[int] | None = None,
    original_affine: Any = None,
    original_shape: Sequence[int] | None = None,
    kind: str | None = None,
) -> dict:
    """Build the metadata dict of one (unbatched) image.

    Parameters
    ----------
    affine:
        Voxel-to-world matrix (RAS+ mm), anything ``torch.as_tensor`` accepts; identity if None.
    filename:
        The file the image came from, if any.
    spatial_shape:
        ``(D, H, W)`` of the image; used as ``original_shape`` when that is not given.
    original_affine, original_shape:
        The grid of the file as read; default to ``affine`` and ``spatial_shape``.
    kind:
        ``"image"`` or ``"label"``; None leaves it out (the dtype rule of :func:`get_kind` applies).

    Example
    -------
    >>> meta = make_meta(torch.eye(4), spatial_shape=(4, 5, 6), kind="label")
    >>> meta["original_shape"].tolist(), meta["kind"]
    ([4, 5, 6], 'label')
    """
    affine = torch.eye(4, dtype=torch.float64) if affine is None else _as_affine(affine)
    original_affine = affine.clone() if original_affine is None else _as_affine(original_affine)
    shape = original_shape if original_shape is not None else spatial_shape
    meta = {"affine": affine, "original_affine": original_affine, "filename": filename}
    if shape is not None:
        meta["original_shape"] = torch.as_tensor(list(shape), dtype=torch.int64)
    if kind is not None:
        meta["kind"] = check_kind(kind, "make_meta: kind")
    return meta


def check_kind(kind: Any, owner: str) -> str:
    """Return ``kind`` if it is ``"image"`` or ``"label"``; raise :class:`TransformError` naming ``owner``.

    Example
    -------
    >>> check_kind("label", "kind")
    'label'
    """
    if kind not in KINDS:
        raise TransformError(f"{owner} must be one of {KINDS}, got {kind!r:.80}")
    return kind


def image_keys(sample: Mapping) -> list[str]:
    """Keys of ``sample`` that hold an image tensor with metadata beside it."""
    return [k for k, v in sample.items() if isinstance(v, torch.Tensor) and meta_key(k) in sample]


def _as_affine(affine: Any) -> torch.Tensor:
    tensor = torch.as_tensor(affine, dtype=torch.float64).detach().cpu().clone()
    if tensor.shape != (4, 4):
        raise TransformError(f"affine must be 4x4, got shape {tuple(tensor.shape)}")
    return tensor
