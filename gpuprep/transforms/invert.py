"""Map data from a preprocessed grid back onto the original scan, by walking the history."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..errors import TransformError
from ..sample import get_history, get_meta, meta_key
from .base import REGISTRY
from .spatial.base import inverse_step, resample_steps


def invert(sample: Mapping, key: str, data: torch.Tensor | None = None, mode: str | None = None) -> dict:
    """Map ``data`` on the preprocessed grid of ``key`` back to the grid ``key`` had when loaded.

    The spatial records of the sample's history that involve ``key`` are undone newest first;
    their inverse maps are multiplied so the data are resampled **once**. Intensity records are
    skipped (they do not move voxels).

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
        Interpolation: ``"nearest"``, ``"linear"``, ``"cubic"``, or ``"onehot"`` (integer labels:
        each label's mask linearly interpolated, then the argmax). Default: ``"onehot"`` for
        integer data (smoother and closer to the truth than nearest when the resolution
        changes), ``"linear"`` for floating point.

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
    data = sample[key] if data is None else data
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
    chain = []  # the inverse steps, newest record first: the order in which they move the data
    target_shape, target_affine = expected, get_meta(sample, key)["affine"].numpy()
    for record in reversed(get_history(sample)):
        transform_class = REGISTRY.get(record["name"])
        if key not in record.get("keys", []) or transform_class is None or not transform_class.spatial:
            continue
        if record["params"].get("apply") is False:  # a random step that skipped this sample
            continue
        if not transform_class.invertible:
            raise TransformError(f"invert: {record['name']} cannot be inverted, so {key!r} cannot be mapped back")
        step = record["params"][key]
        chain.append([inverse_step(step)])
        target_shape, target_affine = tuple(step["in_shape"]), np.asarray(step["in_affine"])
    mode = mode or ("linear" if data.is_floating_point() else "onehot")
    if not chain:
        restored = data.clone()  # never hand back the caller's tensor itself
    elif mode == "onehot":
        restored = resample_steps(data[None], chain, target_shape, "nearest" if data.is_floating_point() else "linear",
                                  label_mode="onehot")[0]
    else:
        restored = resample_steps(data[None], chain, target_shape, mode)[0]
    meta = {**get_meta(sample, key), "affine": torch.from_numpy(target_affine.copy())}
    return {key: restored, meta_key(key): meta}
