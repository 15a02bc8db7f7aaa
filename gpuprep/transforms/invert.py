"""Map data from a preprocessed grid back onto the original scan, by walking the history."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..errors import TransformError
from ..functional.grid import is_lattice_map
from ..records import Step, inverse_step, is_skipped, warp_entry
from ..sample import LABEL, check_kind, collate, decollate, dtype_kind, get_history, get_kind, get_meta, meta_key
from .base import registered_transform
from .fusion import Resampling, composed_maps, resample_steps


class _Run(NamedTuple):
    """Inverse steps resampled together: one list of per-sample steps per position, their padding, their grid."""

    chain: list[list[Step]]
    value: float | str | None
    shape: tuple[int, ...]


def invert(sample: Mapping, key: str, data: torch.Tensor | None = None, mode: str | None = None,
           kind: str | None = None) -> dict | list[dict]:
    """Map ``data`` on the preprocessed grid of ``key`` back to the grid ``key`` had when loaded.

    The spatial records of the sample's history that involve ``key`` are undone newest first;
    their inverse maps are multiplied so the data are resampled **once**. Intensity records are
    skipped (they do not move voxels).

    What the original grid has beyond the preprocessed one (e.g. what a crop cut away) is padded
    like the transform that cut it pads: label maps with 0, intensity images with that transform's
    ``padding_value`` (a number or ``"minimum"``). Records that pad with different values are
    undone in separate resamplings, one per run of equal values.

    A **batch** (``[B, C, D, H, W]``, a history per sample, e.g. from :func:`gpuprep.collate` or
    :func:`gpuprep.pad_collate`) is inverted sample by sample with each sample's own parameters,
    giving exactly what ``invert`` gives on each of ``gp.decollate(batch)``; samples whose
    histories have the same structure (same steps, grids of the same shapes) are resampled
    together in one batched call.

    Parameters
    ----------
    sample:
        A preprocessed sample or batch with its history.
    key:
        The image key whose spatial history to undo (e.g. ``"image"``).
    data:
        ``[C, D, H, W]`` tensor (``[B, C, D, H, W]`` for a batch) on the preprocessed grid of
        ``key``, e.g. a predicted label map; default: ``sample[key]`` itself.
    mode:
        Interpolation: ``"nearest"``, ``"linear"``, ``"cubic"``, or ``"onehot"`` (label maps:
        each label's mask linearly interpolated, then the argmax). Default: ``"onehot"`` for
        label maps (smoother and closer to the truth than nearest when the resolution
        changes), ``"linear"`` for intensity images. Label maps never get ``"linear"`` or
        ``"cubic"``: they are resampled by nearest neighbour then. ``"onehot"`` for an intensity
        image is an error.
    kind:
        ``"image"`` or ``"label"``: what ``data`` is. Default: the kind of ``key`` when ``data``
        is None; for given ``data`` (say, a network's prediction) the dtype rule (integer or bool
        is a label map, floating point an image), except that ``mode="onehot"`` implies a label map.

    Returns
    -------
    dict or list of dict
        ``{key: tensor on the original grid, f"{key}_meta": metadata with the original affine}``,
        ready for :class:`~gpuprep.SaveImage`. For a batch: such a dict batched
        (``[B, C, D, H, W]``, affines ``[B, 4, 4]``) when every sample's original grid has the
        same shape, otherwise (e.g. a :func:`~gpuprep.pad_collate` batch of scans of different
        sizes) a list of ``B`` single-sample dicts, in batch order.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 9, 9, 9)})
    >>> out = gp.Compose([gp.Resample("image", 2.0), gp.CropOrPad("image", (4, 4, 4))])(s)
    >>> gp.invert(out, "image")["image"].shape
    torch.Size([1, 9, 9, 9])
    >>> batch = gp.pad_collate([gp.make_sample({"image": torch.rand(1, n, 6, 6)}) for n in (4, 6)])
    >>> [tuple(s["image"].shape) for s in gp.invert(batch, "image")]
    [(1, 4, 6, 6), (1, 6, 6, 6)]
    """
    batched = _is_batched(sample, key)
    own = data is None
    data = sample[key] if own else data
    expected = tuple(sample[key].shape)
    samples = decollate(sample) if batched else [sample]
    wanted = "[B, C, D, H, W]" if batched else "[C, D, H, W]"
    if not isinstance(data, torch.Tensor) or data.ndim != len(expected) or (batched and len(data) != len(samples)):
        raise TransformError(
            f"invert: data must be a tensor {wanted}" + (f" with B={len(samples)}" if batched else "")
            + f", got {tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__}"
        )
    if tuple(data.shape[-3:]) != expected[-3:]:
        raise TransformError(
            f"invert: data has spatial shape {tuple(data.shape[-3:])}, the grid of {key!r} is {expected[-3:]}"
        )
    if kind is not None:
        kind = check_kind(kind, "invert: kind")
    elif mode == "onehot" and not own:  # given data (a network's prediction): one-hot says it holds labels
        kind = LABEL
    else:
        kind = get_kind(sample, key) if own else dtype_kind(data)
    if mode == "onehot" and kind != LABEL:
        raise TransformError(
            f"invert: mode='onehot' resamples label maps, but the data for {key!r} are an intensity image "
            f"(kind='image'); use mode='linear', 'cubic' or 'nearest', or kind='label' if they hold labels"
        )
    mode = mode or ("onehot" if kind == LABEL else "linear")
    data = data if batched else data[None]
    plans = [_plan(one, key, kind) for one in samples]
    restored: list[torch.Tensor | None] = [None] * len(samples)
    for indices in _groups(plans).values():
        part = data if len(indices) == len(samples) else data[indices]
        runs = [_Run([[plans[i][0][r].chain[j][0] for i in indices] for j in range(len(run.chain))],
                     run.value, run.shape) for r, run in enumerate(plans[indices[0]][0])]
        for position, volume in zip(indices, _resample_runs(part, runs, mode, kind)):
            restored[position] = volume
    outputs: list[dict] = [
        {key: volume, meta_key(key): {**get_meta(one, key), "affine": torch.from_numpy(affine.copy())}}
        for volume, one, (_, affine) in zip(restored, samples, plans)
    ]
    if not batched:
        return outputs[0]
    return collate(outputs) if len({tuple(o[key].shape) for o in outputs}) == 1 else outputs


def _is_batched(sample: Mapping, key: str) -> bool:
    affine = get_meta(sample, key)["affine"]
    tensor = sample[key]
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (4, 5) or (tensor.ndim == 5) != (affine.ndim == 3):
        raise TransformError(
            f"invert: {key!r} must be a sample [C, D, H, W] with a 4x4 affine or a batch [B, C, D, H, W] "
            f"with affines [B, 4, 4], got {tuple(getattr(tensor, 'shape', ()))} with affine {tuple(affine.shape)}"
        )
    return tensor.ndim == 5


def _plan(sample: Mapping, key: str, kind: str) -> tuple[list[_Run], np.ndarray]:
    """The runs of inverse steps that undo one sample's spatial history of ``key``, and the original affine."""
    runs: list[_Run] = []
    target_shape, target_affine = tuple(sample[key].shape[-3:]), get_meta(sample, key)["affine"].numpy()
    for record in reversed(get_history(sample)):
        transform_class = registered_transform(record["name"])
        if key not in record.get("keys", []) or transform_class is None or not transform_class.spatial:
            continue
        if is_skipped(record["params"]):  # a random step that skipped this sample
            continue
        if not transform_class.invertible:
            raise TransformError(f"invert: {record['name']} cannot be inverted, so {key!r} cannot be mapped back")
        step = record["params"][key]
        target_shape, target_affine = tuple(step["in_shape"]), np.asarray(step["in_affine"])
        value = None if kind == LABEL else _padding_value(transform_class, record.get("config", {}))
        if runs and (value is None or runs[-1].value is None or runs[-1].value == value):
            last = runs[-1]
            runs[-1] = _Run([*last.chain, [inverse_step(step)]], value if last.value is None else last.value,
                            target_shape)
        else:
            runs.append(_Run([[inverse_step(step)]], value, target_shape))
    return runs, target_affine


def _groups(plans: list[tuple[list[_Run], np.ndarray]]) -> dict[tuple, list[int]]:
    """Indices of the samples whose inverse runs have the same structure, so one batched resampling serves them."""
    groups: dict[tuple, list[int]] = {}
    for index, (runs, _) in enumerate(plans):
        structure = tuple(
            (run.value, run.shape, _lattice([steps[0] for steps in run.chain]),
             tuple((tuple(s[0]["in_shape"]), tuple(s[0]["out_shape"]), warp_entry(s[0])) for s in run.chain))
            for run in runs
        )
        groups.setdefault(structure, []).append(index)
    return groups


def _lattice(steps: Sequence[Mapping]) -> bool:
    """Whether a chain maps voxels to voxels (label maps are then sliced, not one-hot resampled)."""
    if any(warp_entry(s) for s in steps):
        return False
    return is_lattice_map(composed_maps([[s] for s in steps], 1)[0])


def _resample_runs(data: torch.Tensor, runs: list[_Run], mode: str, kind: str) -> torch.Tensor:
    """Resample a batch ``[B, C, D, H, W]`` through the runs, one resampling per run."""
    restored = data.clone() if not runs else data  # never hand back the caller's tensor itself
    for chain, value, shape in runs:
        if mode == "onehot":
            how = Resampling(mode="linear", label_mode="onehot")
            restored = resample_steps(restored, chain, shape, how=how, kind=LABEL)
        else:
            restored = resample_steps(restored, chain, shape, how=Resampling(mode=mode, padding_value=value or 0.0),
                                      kind=kind)
    return restored


def _padding_value(transform_class, config: Mapping) -> float | str | None:
    """The value a recorded transform pads intensity images with; None if it never looks outside its input."""
    if transform_class.padding_mode is None and "padding_mode" not in config:
        return None
    return config.get("padding_value", 0.0)
