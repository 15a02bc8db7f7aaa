"""Map data from a preprocessed grid back onto the original scan, by walking the history."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..errors import TransformError
from ..sample import LABEL, check_kind, dtype_kind, get_history, get_kind, get_meta, meta_key
from .base import registered_transform
from .spatial.base import inverse_step, resample_steps


def invert(sample: Mapping, key: str, data: torch.Tensor | None = None, mode: str | None = None,
           kind: str | None = None) -> dict:
    """Map ``data`` on the preprocessed grid of ``key`` back to the grid ``key`` had when loaded.

    The spatial records of the sample's history that involve ``key`` are undone newest first;
    their inverse maps are multiplied so the data are resampled **once**. Intensity records are
    skipped (they do not move voxels).

    What the original grid has beyond the preprocessed one (e.g. what a crop cut away) is padded
    like the transform that cut it pads: label maps with 0, intensity images with that transform's
    ``padding_value`` (a number or ``"minimum"``). Records that pad with different values are
    undone in separate resamplings, one per run of equal values.

    Parameters
    ----------
    sample:
        A preprocessed sample (single, not a batch) with its history.
    key:
        The image key whose spatial history to undo (e.g. ``"image"``).
    data:
        ``[C, D, H, W]`` tensor on the preprocessed grid of ``key``, e.g. a predicted label map;
        default: ``sample[key]`` itself.
    mode:
        Interpolation: ``"nearest"``, ``"linear"``, ``"cubic"``, or ``"onehot"`` (label maps:
        each label's mask linearly interpolated, then the argmax). Default: ``"onehot"`` for
        label maps (smoother and closer to the truth than nearest when the resolution
        changes), ``"linear"`` for intensity images. Label maps never get ``"linear"`` or
        ``"cubic"``: they are resampled by nearest neighbour then.
    kind:
        ``"image"`` or ``"label"``: what ``data`` is. Default: the kind of ``key`` when ``data``
        is None; for given ``data`` (say, a network's prediction) the dtype rule (integer or bool
        is a label map, floating point an image); ``mode="onehot"`` implies a label map.

    Returns
    -------
    dict
        ``{key: tensor on the original grid, f"{key}_meta": metadata with the original affine}``,
        ready for :class:`~gpuprep.SaveImage`.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 9, 9, 9)})
    >>> out = gp.Compose([gp.Resample("image", 2.0), gp.CropOrPad("image", (4, 4, 4))])(s)
    >>> gp.invert(out, "image")["image"].shape
    torch.Size([1, 9, 9, 9])
    """
    own = data is None
    data = sample[key] if own else data
    if not isinstance(data, torch.Tensor) or data.ndim != 4:
        raise TransformError(f"invert: data must be a tensor [C, D, H, W], got {getattr(data, 'shape', type(data))}")
    current_shape = tuple(get_meta(sample, key)["affine"].shape)
    if current_shape != (4, 4):
        raise TransformError("invert: give one sample, not a batch (use gp.decollate first)")
    expected = tuple(sample[key].shape[-3:])
    if tuple(data.shape[-3:]) != expected:
        raise TransformError(
            f"invert: data has spatial shape {tuple(data.shape[-3:])}, the grid of {key!r} is {expected}"
        )
    if kind is not None:
        kind = check_kind(kind, "invert: kind")
    elif mode == "onehot":
        kind = LABEL
    else:
        kind = get_kind(sample, key) if own else dtype_kind(data)
    runs: list[tuple[list, object, tuple]] = []  # (inverse steps, padding value, shape they lead to)
    target_shape, target_affine = expected, get_meta(sample, key)["affine"].numpy()
    for record in reversed(get_history(sample)):
        transform_class = registered_transform(record["name"])
        if key not in record.get("keys", []) or transform_class is None or not transform_class.spatial:
            continue
        if record["params"].get("apply") is False:  # a random step that skipped this sample
            continue
        if not transform_class.invertible:
            raise TransformError(f"invert: {record['name']} cannot be inverted, so {key!r} cannot be mapped back")
        step = record["params"][key]
        target_shape, target_affine = tuple(step["in_shape"]), np.asarray(step["in_affine"])
        value = None if kind == LABEL else _padding_value(transform_class, record.get("config", {}))
        if runs and (value is None or runs[-1][1] is None or runs[-1][1] == value):
            runs[-1][0].append([inverse_step(step)])
            runs[-1] = (runs[-1][0], value if runs[-1][1] is None else runs[-1][1], target_shape)
        else:
            runs.append(([[inverse_step(step)]], value, target_shape))
    mode = mode or ("onehot" if kind == LABEL else "linear")
    restored = data.clone() if not runs else data[None]  # never hand back the caller's tensor itself
    for chain, value, shape in runs:
        if mode == "onehot":
            restored = resample_steps(restored, chain, shape, "linear", label_mode="onehot", kind=LABEL)
        else:
            restored = resample_steps(restored, chain, shape, mode, kind=kind, padding_value=value or 0.0)
    if runs:
        restored = restored[0]
    meta = {**get_meta(sample, key), "affine": torch.from_numpy(target_affine.copy())}
    return {key: restored, meta_key(key): meta}


def _padding_value(transform_class, config: Mapping) -> float | str | None:
    """The value a recorded transform pads intensity images with; None if it never looks outside its input."""
    if transform_class.padding_mode is None and "padding_mode" not in config:
        return None
    return config.get("padding_value", 0.0)
