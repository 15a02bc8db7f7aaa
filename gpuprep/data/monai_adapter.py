"""Converting samples to MONAI dictionaries of ``MetaTensor``s and back, keeping geometry, kind and history.

:func:`to_monai` gives each image key a ``MetaTensor`` whose affine is the sample's (RAS+, with
``meta["space"] = "RAS"``), so MONAI's ``Orientationd``, ``Spacingd`` and ``SaveImaged`` see the
true world coordinates; MONAI's ``original_affine`` and ``spatial_shape`` are gpuprep's
``original_affine`` and ``original_shape``, and ``filename_or_obj`` the source path. The key's
kind is kept in ``meta["gpuprep_kind"]`` and the history stays at the top level of the dict
under ``"history"`` (MONAI dictionary transforms pass unknown keys through).

:func:`from_monai` reads them back: affines in MONAI's LPS space are converted to RAS+, kinds come
from ``labels=`` or from ``gpuprep_kind``. gpuprep transforms also accept MetaTensors directly
(:func:`gpuprep.foreign.adopt_foreign`); :func:`from_monai` is that adoption applied to every
MetaTensor of the dict, plus ``labels=``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import TransformError
from ..foreign import MONAI_KIND_FIELD, MONAI_META_DICT_POSTFIX, adopt_foreign, is_metatensor
from ..optional import require_monai
from ..sample import (
    HISTORY_KEY,
    META_SUFFIX,
    decollate,
    get_kind,
    get_meta,
    image_keys,
    is_batch,
    meta_key,
    set_kind,
)


def to_monai(sample: Mapping, keys: str | Sequence[str] | None = None) -> dict:
    """Return a MONAI dictionary: each image key a ``MetaTensor`` with the sample's geometry.

    Parameters
    ----------
    sample:
        A gpuprep sample or batch (a batch gives MONAI batched MetaTensors, ``is_batch=True``).
    keys:
        The image keys to convert; None: every key with metadata. Other entries (the history,
        paths, labels of a classification) are copied as they are; gpuprep metadata entries of
        converted keys are left out, since the MetaTensor now carries them.

    Example
    -------
    >>> import torch, gpuprep as gp
    >>> s = gp.make_sample({"image": torch.zeros(1, 2, 2, 2)}, affine=torch.diag(torch.tensor([2.0, 2, 2, 1])))
    >>> d = gp.to_monai(s)
    >>> type(d["image"]).__name__, d["image"].affine[0, 0].item(), d["image"].meta["space"]
    ('MetaTensor', 2.0, 'RAS')
    """
    MetaTensor, list_data_collate = _monai()
    keys = image_keys(sample) if keys is None else [keys] if isinstance(keys, str) else list(keys)
    sample = adopt_foreign(sample, keys, "to_monai")  # a MetaTensor must agree with the metadata
    for key in keys:
        get_meta(sample, key)  # a clear error for a key without metadata
    out = {k: v for k, v in sample.items() if not (k.endswith(META_SUFFIX) and k[: -len(META_SUFFIX)] in keys)}
    if keys and is_batch(sample, keys[0]):
        singles = [to_monai(s, keys) for s in decollate({k: sample[k] for k in keys + [meta_key(k) for k in keys]})]
        return {**out, **list_data_collate(singles)}
    for key in keys:
        meta = get_meta(sample, key)
        tensor = sample[key]
        out[key] = MetaTensor(
            tensor,
            affine=meta["affine"].clone(),
            meta={
                "original_affine": meta.get("original_affine", meta["affine"]).numpy().copy(),
                "spatial_shape": _original_shape(meta, tensor).numpy().copy(),
                "space": "RAS",
                "original_channel_dim": 0,
                MONAI_KIND_FIELD: get_kind(sample, key),
            },
        )
        if meta.get("filename"):  # without one, MONAI's SaveImage names outputs by a counter
            out[key].meta["filename_or_obj"] = meta["filename"]
    return out


def from_monai(data: Mapping, labels: str | Sequence[str] | None = None) -> dict:
    """Return a gpuprep sample (or batch) from a MONAI dictionary of ``MetaTensor``s.

    Parameters
    ----------
    data:
        A dict such as the output of MONAI's ``LoadImaged`` (with or without
        ``EnsureChannelFirstd``), of MONAI transforms, or of :func:`to_monai`; every MetaTensor
        value becomes an image key. Other entries are copied; MONAI's ``f"{key}_meta_dict"``
        entries of converted keys are dropped (the metadata is in gpuprep's form now).
    labels:
        Keys that are label maps (every other MetaTensor key is an intensity image); None: the kind
        :func:`to_monai` stored, else the dtype rule (integer tensors are labels).

    Example
    -------
    >>> import torch, gpuprep as gp
    >>> s = gp.make_sample({"seg": torch.zeros(1, 2, 2, 2)}, labels=["seg"])
    >>> gp.get_kind(gp.from_monai(gp.to_monai(s)), "seg")
    'label'
    """
    if not isinstance(data, Mapping):
        raise TransformError(f"from_monai expects a dict of MetaTensors, got {type(data).__name__}")
    keys = [k for k, v in data.items() if is_metatensor(v)]
    if not keys:
        raise TransformError(
            f"from_monai: the dict has no MetaTensor values (keys {sorted(map(str, data))[:20]}); MONAI gives "
            "plain tensors when meta tracking is off (monai.data.set_track_meta(False)): turn it on, or wrap the "
            "tensors with gp.make_sample(..., affine=...)"
        )
    if labels is not None:
        labels = [labels] if isinstance(labels, str) else list(labels)
        unknown = sorted(set(labels) - set(keys))
        if unknown:
            raise TransformError(f"from_monai: labels {unknown} are not among the MetaTensor keys {sorted(keys)}")
    out = dict(adopt_foreign(data, keys, "from_monai"))
    for key in keys:
        out.pop(f"{key}{MONAI_META_DICT_POSTFIX}", None)
        if labels is not None:
            out = set_kind(out, key, "label" if key in labels else "image")
    if HISTORY_KEY not in out:
        out[HISTORY_KEY] = [[] for _ in out[keys[0]]] if keys and is_batch(out, keys[0]) else []
    return out


def _original_shape(meta: Mapping, tensor: Any):
    import torch

    shape = meta.get("original_shape")
    return torch.as_tensor(list(tensor.shape[-3:]) if shape is None else shape, dtype=torch.int64)


def _monai():
    data = require_monai("gp.to_monai", "monai.data")
    return data.MetaTensor, data.list_data_collate

