"""LoadImage: the first step of a file-to-file pipeline (:class:`SaveImage`, the last, is re-exported here).

``LoadImage`` turns paths into tensors with metadata, with each key's kind (an intensity image
or a label map); it records what it read (file names, formats) in the history like every other
transform.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import ConfigError, TransformError
from ..io.dicom import check_dicom_check
from ..io.reader import NONFINITE_POLICIES, dtype_name, read_image, resolve_dtype
from ..sample import IMAGE, LABEL, collate, decollate, meta_key
from .base import Transform
from .save_image import SaveImage

__all__ = ["LoadImage", "SaveImage"]

_PathLike = (str, os.PathLike)


class LoadImage(Transform):
    """Read the files named by ``keys`` into tensors ``[C, D, H, W]`` with metadata.

    A sample whose keys hold paths gives tensors and ``f"{key}_meta"`` dicts (see
    :func:`gpuprep.io.read_image`); a batch whose keys hold lists of paths gives stacked tensors
    ``[B, C, D, H, W]`` (all files of a key must have the same shape). The history records, per
    sample and key, the file name, format and number of replaced non-finite voxels.

    Every key gets a **kind** in its metadata (see :func:`gpuprep.get_kind`): the keys named by
    ``labels`` are label maps, all others intensity images. Transforms follow the kind, never
    the dtype, so an int16 CT or MRI is interpolated linearly and normalised like any image.

    Parameters
    ----------
    keys:
        Keys whose values are paths.
    labels:
        The label-map keys: one key, a list of keys (a subset of ``keys``), or True for all keys;
        None (default) means none. Label keys keep the file's integer dtype; a label file stored
        as floating point is cast to the smallest integer dtype that holds its values (uint8,
        int16, int32, int64) when all of them are whole numbers, and refused otherwise.
    dtype:
        Cast to this dtype (a ``torch.dtype`` or a name such as ``"float32"``), or a dict from
        key to dtype. Keys without one: intensity images load as float32 (as in MONAI), label
        maps as described under ``labels``.
    nonfinite:
        ``"error"``, ``"zero"`` or ``"keep"``: what to do with NaN/Inf voxels (see
        :func:`~gpuprep.io.read_image`).
    allow_missing_keys:
        Skip keys that are absent instead of raising.
    dicom_check:
        ``"error"`` or ``"warn"``: what to do with a DICOM series whose slices are not evenly
        stacked (see :func:`~gpuprep.io.read_image`).

    Example
    -------
    >>> import gpuprep as gp
    >>> paths = gp.data.sample_brain_paths()
    >>> load = gp.LoadImage(["image", "label"], labels="label")
    >>> sample = load({"image": str(paths["image"]), "label": str(paths["label"])})
    >>> sample["image"].dtype, sample["label"].dtype, gp.get_kind(sample, "label")
    (torch.float32, torch.uint8, 'label')
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        dtype: Any = None,
        nonfinite: str = "error",
        allow_missing_keys: bool = False,
        labels: str | Sequence[str] | bool | None = None,
        dicom_check: str = "error",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.labels = _label_keys(labels, self.keys)
        self.dicom_check = check_dicom_check(dicom_check, "LoadImage")
        if nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"LoadImage: nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.nonfinite = nonfinite
        if isinstance(dtype, Mapping):
            unknown = sorted(set(dtype) - set(self.keys))
            if unknown:
                raise ConfigError(f"LoadImage: dtype has keys {unknown} that are not in keys {self.keys}")
            self.dtypes = {k: resolve_dtype(dtype.get(k), f"LoadImage: dtype[{k!r}]") for k in self.keys}
            self._dtype_config: Any = {k: dtype_name(v) for k, v in self.dtypes.items() if k in dtype}
        else:
            resolved = resolve_dtype(dtype, "LoadImage: dtype")
            self.dtypes = dict.fromkeys(self.keys, resolved)
            self._dtype_config = dtype_name(resolved)

    def get_config(self) -> dict:
        """Constructor arguments, with dtypes as names so the config survives YAML."""
        return {**super().get_config(), "dtype": self._dtype_config}

    def is_single(self, data: Mapping, keys: list[str]) -> bool:
        """A path is one sample; a list of paths is a batch (all keys must agree)."""
        sizes: dict[str, int | None] = {}
        for key in keys:
            value = data[key]
            if isinstance(value, _PathLike):
                sizes[key] = None
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, _PathLike) for v in value):
                sizes[key] = len(value)
            else:
                shown = repr(value)
                if isinstance(value, torch.Tensor):
                    shown = f"a tensor of shape {tuple(value.shape)}"
                raise TransformError(
                    f"LoadImage: key {key!r} must hold a path or a non-empty list of paths, got {shown:.200}"
                )
        if len(set(sizes.values())) > 1:
            found = {k: "one path" if n is None else f"{n} paths" for k, n in sizes.items()}
            raise TransformError(
                f"LoadImage: keys must all hold one path or lists of the same length, got {found}"
            )
        return next(iter(sizes.values())) is None

    def __call__(self, data: Mapping) -> dict:
        """Load the files of a sample (paths) or a batch (lists of paths); return a new dict."""
        batch, single, keys = self._prepare(data)
        if not keys:
            return dict(data)
        out, params = self._load(batch, keys)
        out = self._record(out, keys, params)
        return decollate(out)[0] if single else out

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        """Load the files again (used by :meth:`replay`; the recorded params are informative)."""
        return self._load(batch, keys)[0]

    def _load(self, batch: dict, keys: list[str]) -> tuple[dict, list[dict]]:
        params: list[dict] = [{} for _ in batch[keys[0]]]
        out = dict(batch)
        for key in keys:
            kind = LABEL if key in self.labels else IMAGE
            dtype = self.dtypes[key]
            if dtype is None and kind == IMAGE:
                dtype = torch.float32
            loaded = [read_image(p, dtype=dtype, nonfinite=self.nonfinite, dicom_check=self.dicom_check)
                      for p in batch[key]]
            if dtype is None:  # a label map without an explicit dtype: integers
                loaded = [(_as_label_map(data, meta["filename"]), meta) for data, meta in loaded]
            loaded = [(data, {**meta, "kind": kind}) for data, meta in loaded]
            shapes = {meta["filename"]: tuple(data.shape) for data, meta in loaded}
            if len(set(shapes.values())) > 1:
                raise TransformError(
                    f"LoadImage: the files of key {key!r} in this batch have different shapes {shapes}; "
                    "load them one at a time, or crop/pad/resample them to a common shape before batching"
                )
            common = functools.reduce(torch.promote_types, [data.dtype for data, _ in loaded])
            tensors = [data.to(common) for data, _ in loaded]  # label files of one batch may differ
            out[key] = tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)
            out[meta_key(key)] = collate([meta for _, meta in loaded])
            for index, (_, meta) in enumerate(loaded):
                params[index][key] = {
                    "filename": meta["filename"],
                    "format": meta["format"],
                    "nonfinite_replaced": meta["nonfinite_replaced"],
                }
        return out, params


def _label_keys(labels: Any, keys: list[str]) -> list[str]:
    """Validate ``LoadImage(labels=...)``; return the label keys."""
    if labels is None or labels is False:
        return []
    if labels is True:
        return list(keys)
    names = [labels] if isinstance(labels, str) else labels
    if not isinstance(names, (list, tuple)) or not all(isinstance(k, str) and k for k in names):
        raise ConfigError(f"LoadImage: labels must be a key, a list of keys or True, got {labels!r:.200}")
    unknown = [k for k in names if k not in keys]
    if unknown:
        raise ConfigError(f"LoadImage: labels {unknown} are not among keys {keys}; labels must be a subset of keys")
    return list(names)


#: Integer dtypes a floating-point label file may become, smallest first.
_LABEL_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def _as_label_map(data: torch.Tensor, filename: str | None) -> torch.Tensor:
    """A label map read from a file: integers as they are; floats cast to the smallest integer dtype that fits.

    Example
    -------
    >>> _as_label_map(torch.tensor([0.0, 2.0, 300.0]), "seg.nii.gz").dtype
    torch.int16
    """
    if not data.is_floating_point():
        return data
    whole = torch.isfinite(data) & (data == data.round())
    if not bool(whole.all()):
        example = data[~whole].flatten()[0].item()
        raise TransformError(
            f"LoadImage: {filename} is declared a label map (labels=...) but holds values that are not whole "
            f"numbers, e.g. {example!r}; load it as an image, or give dtype= for this key"
        )
    if data.numel() == 0:
        return data.to(torch.uint8)
    low, high = data.min().item(), data.max().item()
    for dtype in _LABEL_DTYPES:
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return data.to(dtype)
    raise TransformError(f"LoadImage: {filename} holds labels in [{low}, {high}], beyond int64")
