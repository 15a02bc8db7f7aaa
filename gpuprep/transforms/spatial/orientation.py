"""Reorient images to standard axis codes by exact axis permutation and flipping."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...errors import ConfigError, TransformError
from ...functional.orientation import (
    apply_orientation,
    axcodes_of,
    invert_orientation_transform,
    orientation_transform,
    reoriented_affine,
)
from ...sample import meta_key
from ..base import Transform, replace_meta

_AXIS_PAIRS = ({"L", "R"}, {"P", "A"}, {"I", "S"})


class Orientation(Transform):
    """Reorder and flip the voxel axes so that they point along ``axcodes`` (no interpolation).

    The data are permuted/flipped exactly and the affine is updated so that every voxel keeps
    its world position; the result agrees with :func:`nibabel.as_closest_canonical` for
    ``axcodes="RAS"``. Samples of a batch with different orientations are each handled
    correctly (they must end with the same shape to stay in one batch).

    Parameters
    ----------
    keys:
        Image keys to reorient.
    axcodes:
        Three letters, one of L/R, one of P/A and one of I/S, e.g. ``"RAS"`` or ``"LPS"``: the
        direction in which each voxel axis increases.
    allow_missing_keys:
        Skip keys that are absent instead of raising.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.zeros(1, 4, 5, 6)}, affine=torch.diag(torch.tensor([-1., 1, 1, 1])))
    >>> gp.axcodes_of(gp.get_affine(gp.Orientation("image", "RAS")(s), "image"))
    'RAS'
    """

    invertible = True
    spatial = True

    def __init__(self, keys: str | Sequence[str], axcodes: str = "RAS", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        codes = axcodes.upper() if isinstance(axcodes, str) else axcodes
        if not isinstance(codes, str) or len(codes) != 3 or not all(
            len(set(codes) & pair) == 1 for pair in _AXIS_PAIRS
        ):
            raise ConfigError(
                f"Orientation: axcodes must be three letters with one of L/R, P/A and I/S "
                f"(e.g. 'RAS'), got {axcodes!r}"
            )
        self.axcodes = codes

    def make_params(self, batch: dict, keys: list[str]) -> list[dict]:
        size = len(batch[keys[0]])
        params: list[dict] = [{} for _ in range(size)]
        for key in keys:
            for index, affine in enumerate(batch[meta_key(key)]["affine"]):
                ornt = orientation_transform(affine.numpy(), self.axcodes)
                params[index][key] = {"ornt": ornt.astype(int).tolist(), "from": axcodes_of(affine.numpy())}
        return params

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        for key in keys:
            ornts = [np.asarray(p[key]["ornt"]) for p in params]
            batch[key] = _orient_batch(batch[key], ornts, key)
            affines = batch[meta_key(key)]["affine"]
            shape = batch[key].shape[-3:]
            new = [reoriented_affine(a, o, _source_shape(shape, o)) for a, o in zip(affines, ornts)]
            replace_meta(batch, key, affine=torch.stack(new))
        return batch

    def invert_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        inverse = [
            {key: {"ornt": invert_orientation_transform(p[key]["ornt"]).astype(int).tolist()} for key in keys}
            for p in params
        ]
        return self.apply_params(batch, keys, inverse)


def _source_shape(target_shape: Sequence[int], ornt: np.ndarray) -> tuple[int, ...]:
    """Spatial shape before ``ornt`` was applied, given the shape after it."""
    return tuple(int(target_shape[int(ornt[axis, 0])]) for axis in range(3))


def _orient_batch(volume: torch.Tensor, ornts: list[np.ndarray], key: str) -> torch.Tensor:
    """Apply per-sample orientation transforms, one tensor operation per distinct transform."""
    groups: dict[bytes, list[int]] = {}
    for index, ornt in enumerate(ornts):
        groups.setdefault(ornt.astype(int).tobytes(), []).append(index)
    if len(groups) == 1:
        return apply_orientation(volume, ornts[0]).contiguous()
    parts = {tuple(idx): apply_orientation(volume[idx], ornts[idx[0]]) for idx in groups.values()}
    shapes = {tuple(p.shape[-3:]) for p in parts.values()}
    if len(shapes) > 1:
        raise TransformError(
            f"Orientation: samples of key {key!r} in this batch end with different shapes {sorted(shapes)}; "
            "reorient before batching"
        )
    out = volume.new_empty((volume.shape[0], volume.shape[1], *shapes.pop()))
    for idx, part in parts.items():
        out[list(idx)] = part
    return out
