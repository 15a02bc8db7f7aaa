"""Collate samples of different spatial shapes by padding each to the largest shape of the batch.

Scans rarely share one grid. :func:`pad_collate` (a DataLoader ``collate_fn``) pads every image
key of every sample, around its centre, to the per-axis maximum of that key's shapes in the
batch, then stacks the samples with :func:`gpuprep.collate`. The padding is done by a real
:class:`~gpuprep.CropOrPad` (registered and invertible), so it is recorded in each sample's
history with the exact voxel map, the affine is shifted so world coordinates are kept, and it can
be undone:

- ``gp.invert(gp.decollate(batch)[i], key, prediction_i)`` maps a prediction all the way back to
  sample *i*'s original scan (grid and affine), through the padding and every earlier spatial
  step of its history;
- ``gp.invert(batch, key, predictions)`` does so for the whole batch at once (a list of samples,
  as their original grids differ);
- :func:`unpad` only removes the padding (exact slicing, no resampling, unless spatial steps
  followed the padding): each sample's data on the grid it had before collation.

The pad is applied to every sample, also those already at the batch shape (an identity step),
so all samples of a batch have histories of the same length and structure: batched transforms
after it and :func:`gpuprep.decollate` treat them alike, and a history replays the same way
whatever the other samples of the batch were.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from types import EllipsisType

import numpy as np
import torch

from ..errors import ConfigError, MissingKeyError, TransformError
from ..sample import HISTORY_KEY, collate, decollate, get_history, image_keys, meta_key
from ..transforms.invert import invert
from ..transforms.spatial.crop_pad import CropOrPad

__all__ = ["PAD_MODES", "pad_collate", "unpad"]

#: Padding modes, with NumPy's ``np.pad`` meanings.
PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def pad_collate(
    samples: Sequence[Mapping],
    keys: str | Sequence[str] | None = None,
    mode: str = "constant",
    value: float = 0,
) -> dict:
    """Pad samples to the largest spatial shape in the batch (per key and axis), then collate.

    Parameters
    ----------
    samples:
        Single samples (image keys ``[C, D, H, W]`` with metadata), e.g. from a Dataset.
    keys:
        Image keys to pad; None: every image key of the first sample. Every sample must have
        them, with the same number of channels and the same dtype per key.
    mode:
        How the added voxels are filled, as in ``np.pad``: ``"constant"`` (``value``),
        ``"edge"``, ``"reflect"``, ``"symmetric"`` or ``"wrap"``.
    value:
        Fill of ``mode="constant"`` (integral for integer label maps, e.g. an ignore index).

    Returns
    -------
    dict
        The batch, as :func:`gpuprep.collate` makes it. Each sample's history ends with one
        ``CropOrPad`` record per distinct target shape (usually one for all keys). With a fill
        other than zeros its parameters also hold ``"fill": {"mode", "value"}``; replaying that
        record reproduces the grid and every original voxel, but pads with zeros.

    Example
    -------
    >>> import functools, gpuprep as gp, torch
    >>> samples = [gp.make_sample({"image": torch.rand(1, *shape)}) for shape in [(4, 6, 5), (6, 4, 5)]]
    >>> batch = pad_collate(samples)
    >>> tuple(batch["image"].shape)
    (2, 1, 6, 6, 5)
    >>> back = gp.invert(gp.decollate(batch)[1], "image")          # the original grid of sample 1
    >>> torch.equal(back["image"], samples[1]["image"])
    True
    >>> collate_fn = functools.partial(pad_collate, keys=["image"], mode="edge")  # for a DataLoader
    """
    samples = list(samples)
    if not samples:
        raise TransformError("pad_collate: got an empty list of samples")
    mode, value = _check_fill(mode, value)
    keys = _check_keys(samples, keys)
    targets = {key: tuple(max(int(s[key].shape[axis]) for s in samples) for axis in (1, 2, 3)) for key in keys}
    for key in keys:
        _check_value_fits(value, samples[0][key].dtype, key)
    groups: dict[tuple[int, ...], list[str]] = {}
    for key in keys:
        groups.setdefault(targets[key], []).append(key)
    pads = [CropOrPad(group, shape) for shape, group in groups.items()]
    default_fill = mode == "constant" and value == 0
    return collate([_pad_sample(sample, pads, None if default_fill else (mode, value)) for sample in samples])


def unpad(batch: Mapping, key: str, data: torch.Tensor | None = None) -> list[dict]:
    """Remove the padding that :func:`pad_collate` added, sample by sample.

    Undoes, for each sample, its last ``pad_collate`` step of ``key`` and every spatial step the
    batch went through after it (e.g. a batched ``RandAffine``), with :func:`gpuprep.invert`
    restricted to those records; with no such later step this is exact slicing.

    Parameters
    ----------
    batch:
        A batch made by :func:`pad_collate` (possibly transformed afterwards).
    key:
        The padded image key whose padding to remove.
    data:
        ``[B, C, D, H, W]`` on the current grid of ``key`` (e.g. the model's predictions);
        default: ``batch[key]``.

    Returns
    -------
    list of dict
        One ``{key: [C, d, h, w] tensor, f"{key}_meta": metadata}`` per sample, on the grid the
        sample had before :func:`pad_collate` (its affine included). To go back to the original
        scan through every spatial step instead, use ``gp.invert(batch, key, data)``.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> samples = [gp.make_sample({"image": torch.rand(1, *shape)}) for shape in [(4, 6, 5), (6, 4, 5)]]
    >>> [tuple(s["image"].shape) for s in unpad(pad_collate(samples), "image")]
    [(1, 4, 6, 5), (1, 6, 4, 5)]
    """
    data = batch[key] if data is None else data
    if not isinstance(batch.get(key), torch.Tensor) or batch[key].ndim != 5:
        raise TransformError(f"unpad: {key!r} of the batch must be a tensor [B, C, D, H, W]")
    size, grid = len(batch[key]), tuple(batch[key].shape[-3:])
    if not isinstance(data, torch.Tensor) or data.ndim != 5 or data.shape[0] != size:
        raise TransformError(
            f"unpad: data for {key!r} must be a tensor [B, C, D, H, W] with B={size}, "
            f"got {tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__}"
        )
    if tuple(data.shape[-3:]) != grid:
        raise TransformError(f"unpad: data for {key!r} has spatial shape {tuple(data.shape[-3:])}, "
                             f"the batch's padded grid is {grid}")
    histories = get_history(batch) or [[] for _ in range(size)]
    since_pad = [history[_last_pad_index(history, key, index):] for index, history in enumerate(histories)]
    restored = invert({**batch, HISTORY_KEY: since_pad}, key, data)
    return restored if isinstance(restored, list) else decollate(restored)


def _pad_sample(sample: Mapping, pads: list[CropOrPad], fill: tuple[str, float] | None) -> dict:
    out = dict(sample)
    for pad in pads:
        before = out
        out = pad(out)
        if fill is None:
            continue
        record = get_history(out)[-1]
        for key in pad.keys:
            step = record["params"][key]
            out[key] = pad_volume(before[key], _pad_before(step), step["out_shape"], *fill)
        params = {**record["params"], "fill": {"mode": fill[0], "value": fill[1]}}
        out[HISTORY_KEY] = [*get_history(out)[:-1], {**record, "params": params}]
    return out


def pad_volume(
    volume: torch.Tensor, before: Sequence[int], shape: Sequence[int], mode: str = "constant", value: float = 0
) -> torch.Tensor:
    """Pad the spatial axes of ``volume [..., D, H, W]`` to ``shape``, ``before`` voxels at the start.

    Exact for any dtype and device: the output is built by index selection (``np.pad`` modes).

    Example
    -------
    >>> pad_volume(torch.tensor([[[[1, 2, 3]]]]), [0, 0, 2], [1, 1, 6], "reflect").tolist()
    [[[[3, 2, 1, 2, 3, 2]]]]
    """
    if mode == "constant":
        out = volume.new_full((*volume.shape[:-3], *shape), value)
        region = tuple(slice(b, b + n) for b, n in zip(before, volume.shape[-3:]))
        inside: tuple[EllipsisType | slice, ...] = (..., *region)
        out[inside] = volume
        return out
    for axis, (start, size) in enumerate(zip(before, shape)):
        dim = volume.ndim - 3 + axis
        index = _source_index(size, start, volume.shape[dim], mode)
        volume = volume.index_select(dim, torch.as_tensor(index, device=volume.device))
    return volume


def _source_index(size: int, start: int, length: int, mode: str) -> np.ndarray:
    """For each output position of one axis, the input position it copies (``np.pad`` rules)."""
    position = np.arange(size) - start
    if mode == "edge" or length == 1:
        return np.clip(position, 0, length - 1)
    if mode == "wrap":
        return np.mod(position, length)
    if mode == "symmetric":  # edge voxel repeated: ... 1 0 | 0 1 2 | 2 1 ...
        position = np.mod(position, 2 * length)
        return np.where(position < length, position, 2 * length - 1 - position)
    position = np.mod(position, 2 * length - 2)  # reflect: ... 2 1 | 0 1 2 | 1 0 ...
    return np.where(position < length, position, 2 * length - 2 - position)


def _pad_before(step: Mapping) -> list[int]:
    """Voxels added at the start of each axis by a crop-or-pad step (its map is a translation)."""
    return [-int(np.rint(t)) for t in np.asarray(step["voxel_map"])[:3, 3]]


def _last_pad_index(history: Sequence[Mapping], key: str, index: int) -> int:
    """Position in ``history`` of the last ``CropOrPad`` record of ``key`` (the one ``pad_collate`` adds)."""
    for position in range(len(history) - 1, -1, -1):
        record = history[position]
        if record.get("name") == "CropOrPad" and key in record.get("keys", []):
            step = record["params"][key]
            if any(o < i for o, i in zip(step["out_shape"], step["in_shape"])):
                raise TransformError(
                    f"unpad: the last CropOrPad of {key!r} in sample {index} crops "
                    f"{step['in_shape']} -> {step['out_shape']}; it is not a pad_collate step"
                )
            return position
    raise TransformError(f"unpad: sample {index} has no CropOrPad record for {key!r}; was it made by pad_collate?")


def _check_fill(mode: str, value: float) -> tuple[str, float]:
    if mode not in PAD_MODES:
        raise ConfigError(f"pad_collate: mode must be one of {PAD_MODES}, got {mode!r}")
    if not isinstance(value, Real) or isinstance(value, bool) or not np.isfinite(float(value)):
        raise ConfigError(f"pad_collate: value must be a finite number, got {value!r}")
    return mode, int(value) if isinstance(value, Integral) else float(value)  # plain JSON numbers


def _check_value_fits(value: float, dtype: torch.dtype, key: str) -> None:
    if dtype.is_floating_point or dtype.is_complex:
        return
    low, high = (0, 1) if dtype == torch.bool else (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
    if float(value) != int(value) or not low <= int(value) <= high:
        raise TransformError(
            f"pad_collate: value={value!r} cannot fill {key!r} of dtype {dtype}; "
            f"give an integer in [{low}, {high}]"
        )


def _check_keys(samples: list[Mapping], keys: str | Sequence[str] | None) -> list[str]:
    for index, sample in enumerate(samples):
        if not isinstance(sample, Mapping):
            raise TransformError(f"pad_collate: sample {index} must be a dict, got {type(sample).__name__}")
    if keys is None:
        keys = image_keys(samples[0])
    elif isinstance(keys, str):
        keys = [keys]
    elif not isinstance(keys, Sequence) or not keys or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"pad_collate: keys must be None, a key or a non-empty list of keys, got {keys!r}")
    keys = list(keys)
    for key in keys:
        for index, sample in enumerate(samples):
            if key not in sample or meta_key(key) not in sample:
                raise MissingKeyError(
                    f"pad_collate: sample {index} has no image {key!r} with metadata; "
                    f"its image keys are {image_keys(sample)}"
                )
            tensor = sample[key]
            if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise TransformError(
                    f"pad_collate: {key!r} of sample {index} must be a tensor [C, D, H, W], got {shape}"
                )
        channels = [int(s[key].shape[0]) for s in samples]
        if len(set(channels)) > 1:
            raise TransformError(
                f"pad_collate: key {key!r} has different channel counts across samples {channels}; "
                "only spatial shapes may differ"
            )
        dtypes = [s[key].dtype for s in samples]
        if len(set(dtypes)) > 1:
            raise TransformError(f"pad_collate: key {key!r} has different dtypes across samples {dtypes}")
    return keys
