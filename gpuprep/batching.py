"""Batches of samples: stacking samples into a batch, splitting it, and picking or merging sub-batches.

A batch has the keys of its samples with a leading batch dimension: image tensors
``[B, C, D, H, W]``, metadata collated key by key (affines ``[B, 4, 4]``), every other value a
list with one entry per sample (see :mod:`gpuprep.sample`, which re-exports these functions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import TransformError


def collate(samples: Sequence[Mapping]) -> dict:
    """Stack a list of samples into one batch (usable as a DataLoader ``collate_fn``).

    Tensors are stacked along a new first dimension (one sample is unsqueezed, no copy), nested
    dicts such as the metadata are collated key by key, and every other value (paths,
    histories, strings) becomes a list with one entry per sample.

    Example
    -------
    >>> from gpuprep.sample import make_sample
    >>> a = make_sample({"image": torch.zeros(1, 2, 2, 2)})
    >>> batch = collate([a, a])
    >>> tuple(batch["image"].shape), tuple(batch["image_meta"]["affine"].shape)
    ((2, 1, 2, 2, 2), (2, 4, 4))
    """
    if not samples:
        raise ValueError("collate: got an empty list of samples")
    keys = list(samples[0].keys())
    for index, sample in enumerate(samples[1:], start=1):
        if list(sample.keys()) != keys and set(sample.keys()) != set(keys):
            raise TransformError(
                f"collate: sample {index} has keys {sorted(sample)}, sample 0 has {sorted(keys)}"
            )
    return {key: _collate_values([s[key] for s in samples], key) for key in keys}


def _collate_values(values: list, key: str) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        if len(values) == 1:
            return first.unsqueeze(0)
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise TransformError(
                f"collate: key {key!r} has different shapes across samples {sorted(shapes)}; "
                "crop or pad to a common shape first"
            )
        return torch.stack(values)
    if isinstance(first, Mapping):
        return {k: _collate_values([v[k] for v in values], f"{key}.{k}") for k in first}
    return list(values)


def decollate(batch: Mapping) -> list[dict]:
    """Split a batch into a list of samples, the inverse of :func:`collate`.

    Example
    -------
    >>> from gpuprep.sample import make_sample
    >>> a = make_sample({"image": torch.zeros(1, 2, 2, 2)})
    >>> [tuple(s["image"].shape) for s in decollate(collate([a, a]))]
    [(1, 2, 2, 2), (1, 2, 2, 2)]
    """
    size = batch_size(batch)
    return [{key: _decollate_value(value, i) for key, value in batch.items()} for i in range(size)]


def _decollate_value(value: Any, index: int) -> Any:
    if isinstance(value, Mapping):
        return {k: _decollate_value(v, index) for k, v in value.items()}
    return value[index]


def batch_size(batch: Mapping) -> int:
    """Number of samples in a batch, read from its first tensor or list."""
    for value in batch.values():
        if isinstance(value, Mapping):
            try:
                return batch_size(value)
            except ValueError:
                continue
        if isinstance(value, (torch.Tensor, list)):
            return len(value)
    raise ValueError("batch_size: the batch holds no tensor or list to count samples from")


def select(batch: Mapping, indices: Sequence[int]) -> dict:
    """The sub-batch of the samples at ``indices`` (tensors indexed, lists picked, dicts recursed).

    Example
    -------
    >>> from gpuprep.sample import make_sample
    >>> b = collate([make_sample({"image": torch.full((1, 2, 2, 2), float(i))}) for i in range(3)])
    >>> select(b, [2, 0])["image"][:, 0, 0, 0, 0].tolist()
    [2.0, 0.0]
    """
    index = list(indices)
    return {key: _select_value(value, index) for key, value in batch.items()}


def _select_value(value: Any, index: list[int]) -> Any:
    if isinstance(value, torch.Tensor):
        return value[index]
    if isinstance(value, Mapping):
        return {k: _select_value(v, index) for k, v in value.items()}
    return [value[i] for i in index]


def merge(batch: Mapping, parts: Sequence[tuple[Sequence[int], Mapping]]) -> dict:
    """Put transformed sub-batches back at their positions; the inverse of :func:`select`.

    ``parts`` are ``(indices, sub_batch)`` pairs covering every sample once; tensors of a key
    must end with the same shape in every part.
    """
    size = batch_size(batch)
    pieces = [(list(indices), part) for indices, part in parts]
    keys = list(pieces[0][1].keys()) if pieces else list(batch.keys())
    return {key: _merge_values([(i, p[key]) for i, p in pieces], size, key) for key in keys}


def _merge_values(pieces: list[tuple[list[int], Any]], size: int, key: str) -> Any:
    first = pieces[0][1]
    if isinstance(first, torch.Tensor):
        shapes = {tuple(p.shape[1:]) for _, p in pieces}
        if len(shapes) > 1:
            raise TransformError(f"merge: key {key!r} ends with different shapes {sorted(shapes)} in one batch")
        merged = first.new_empty((size, *first.shape[1:]))
        for index, part in pieces:
            merged[index] = part
        return merged
    if isinstance(first, Mapping):
        return {k: _merge_values([(i, p[k]) for i, p in pieces], size, f"{key}.{k}") for k in first}
    out: list = [None] * size
    for index, part in pieces:
        for position, value in zip(index, part):
            out[position] = value
    return out
