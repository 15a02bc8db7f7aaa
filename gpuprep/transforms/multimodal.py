"""Multi-modal input: stack co-registered keys (T1, T2, FLAIR; PET and CT) into the channels of one key."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ConfigError, TransformError
from ..functional.grid import corner_distance
from ..sample import IMAGE, copy_meta, get_kind, get_meta, meta_key
from ..validation import check_bool
from .base import Transform


class ConcatKeys(Transform):
    """Stack co-registered images into the channels of one key, after checking that their grids agree.

    The tensors of ``keys`` are concatenated along the channel axis, in the order given, into
    ``output_key`` (a new key, or one of ``keys``, which is then replaced). Before stacking, every
    key's grid is compared with the first key's, per sample: the spatial shapes must be equal and
    the voxel-to-world affines must put every corner of the grid at the same place within
    ``tolerance`` times the first key's smallest voxel size (in mm). Otherwise a
    :class:`~gpuprep.errors.TransformError` names both keys and what differs: the shapes, or the
    largest distance in mm between the two affines' corners. Resample one key onto the other's
    grid first (:class:`~gpuprep.ResampleToReference`).

    All keys must have the same kind (:func:`gpuprep.get_kind`): stacking an intensity image with
    a label map is refused unless ``allow_mixed_kinds=True`` (e.g. a lesion mask given to a network
    as an extra input channel); the stack is then an intensity image. The output dtype is
    the promotion of the inputs' dtypes (:func:`torch.promote_types`): int16 CT with float32 PET
    gives float32, float16 with uint8 float16, uint8 with int16 labels int16. The output key's
    metadata is a copy of the first key's (affine, original grid, filename); to map a prediction
    on the stacked grid back to the original scan, invert through the first key:
    ``gp.invert(out, keys[0], data=prediction)``. The history records the number of channels
    each key contributed.

    Parameters
    ----------
    keys:
        Image keys on the same grid (usually two or more), stacked in this order.
    output_key:
        Key of the stacked image.
    delete_keys:
        Remove the source keys (other than ``output_key``) and their metadata after stacking, as
        MONAI's ``ConcatItemsd`` does not (it keeps them); the default keeps them.
    allow_mixed_kinds:
        Allow stacking image and label keys together.
    tolerance:
        Allowed corner distance between two grids, as a fraction of the first key's smallest
        voxel size (``1e-3`` of 1 mm voxels is 1 micrometre).
    allow_missing_keys:
        Skip absent keys instead of raising (the remaining ones are stacked).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"t1": torch.rand(1, 4, 4, 4), "flair": torch.rand(1, 4, 4, 4)})
    >>> out = gp.ConcatKeys(["t1", "flair"], "image")(s)
    >>> tuple(out["image"].shape), torch.equal(out["image"][1], s["flair"][0])
    ((2, 4, 4, 4), True)
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        output_key: str,
        delete_keys: bool = False,
        allow_mixed_kinds: bool = False,
        tolerance: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        if len(set(self.keys)) != len(self.keys):
            raise ConfigError(f"{name}: keys must be distinct, got {self.keys!r}")
        if not isinstance(output_key, str) or not output_key:
            raise ConfigError(f"{name}: output_key must be a non-empty string, got {output_key!r}")
        check_bool(name, "delete_keys", delete_keys)
        check_bool(name, "allow_mixed_kinds", allow_mixed_kinds)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
            raise ConfigError(f"{name}: tolerance must be a number in [0, 1) (a fraction of a voxel), "
                              f"got {tolerance!r}")
        self.output_key = output_key
        self.delete_keys = delete_keys
        self.allow_mixed_kinds = allow_mixed_kinds
        self.tolerance = float(tolerance)

    def make_params(self, batch: dict, keys: list[str]) -> list[dict]:
        channels = {key: int(batch[key].shape[1]) for key in keys}
        return [{"channels": dict(channels)} for _ in range(len(batch[keys[0]]))]

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        name = type(self).__name__
        if self.output_key in batch and self.output_key not in keys:
            raise TransformError(
                f"{name}: output_key {self.output_key!r} already holds another image; pick a new key or one of {keys}"
            )
        kinds = {key: get_kind(batch, key) for key in keys}
        if len(set(kinds.values())) > 1 and not self.allow_mixed_kinds:
            raise TransformError(
                f"{name}: keys have different kinds {kinds}; stacking an image with a label map needs "
                "allow_mixed_kinds=True"
            )
        first = keys[0]
        for key in keys[1:]:
            check_same_grid(batch, first, key, self.tolerance, name)
            if batch[key].device != batch[first].device:
                raise TransformError(
                    f"{name}: {key!r} is on {batch[key].device}, {first!r} on {batch[first].device}; "
                    "move them to one device first"
                )
        dtype = batch[first].dtype
        for key in keys[1:]:
            dtype = torch.promote_types(dtype, batch[key].dtype)
        stacked = torch.cat([batch[key].to(dtype) for key in keys], dim=1)
        meta = copy_meta(get_meta(batch, first))
        kind = kinds[first] if len(set(kinds.values())) == 1 else IMAGE
        meta["kind"] = [kind] * len(stacked) if isinstance(meta.get("kind"), list) else kind
        if self.delete_keys:
            for key in keys:
                batch.pop(key)
                batch.pop(meta_key(key), None)
        batch[self.output_key] = stacked
        batch[meta_key(self.output_key)] = meta
        return batch


def check_same_grid(batch: dict, first: str, second: str, tolerance: float, owner: str) -> None:
    """Raise :class:`TransformError` unless ``first`` and ``second`` share one voxel grid in every sample.

    Shapes must be equal; the two affines must place the eight corners of the grid within
    ``tolerance`` times the first key's smallest voxel size of each other. Only the small
    metadata on the CPU is read.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.collate([gp.make_sample({"a": torch.zeros(1, 2, 2, 2), "b": torch.zeros(1, 2, 2, 2)})])
    >>> check_same_grid(s, "a", "b", 1e-3, "demo")  # no error: the same grid
    """
    shape_a, shape_b = tuple(batch[first].shape[-3:]), tuple(batch[second].shape[-3:])
    if shape_a != shape_b:
        raise TransformError(
            f"{owner}: {first!r} and {second!r} are not on the same grid: spatial shapes {shape_a} and {shape_b}; "
            "resample one onto the other first (ResampleToReference)"
        )
    affine_a = np.asarray(get_meta(batch, first)["affine"], dtype=np.float64).reshape(-1, 4, 4)
    affine_b = np.asarray(get_meta(batch, second)["affine"], dtype=np.float64).reshape(-1, 4, 4)
    distance = corner_distance(affine_a, affine_b, shape_a)  # [B] mm
    voxel = np.linalg.norm(affine_a[:, :3, :3], axis=1).min(axis=1)  # smallest column norm per sample
    worst = int(np.argmax(distance / voxel))
    if distance[worst] > tolerance * voxel[worst]:
        raise TransformError(
            f"{owner}: {first!r} and {second!r} are not on the same grid: their affines place the grid corners "
            f"up to {distance[worst]:.4g} mm apart (sample {worst}; allowed {tolerance * voxel[worst]:.3g} mm = "
            f"{tolerance:g} voxel); resample one onto the other first (ResampleToReference)"
        )
