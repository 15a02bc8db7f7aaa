"""Fusion: consecutive spatial steps resampled once, by :class:`~gpuprep.Compose`, ``replay`` and ``invert``.

A spatial transform only *plans*: per sample and key it returns a :class:`~gpuprep.records.Step`
(input grid, output grid, and the voxel map between them). This module turns a chain of steps
into data:

1. :func:`fusion_runs` groups a pipeline's consecutive spatial transforms into runs that can be
   resampled together (one displacement field per run, never with cubic interpolation, one
   padding value per run);
2. :func:`apply_fused` plans each transform of a run on the grid the previous one would have
   produced, records every transform as if it had run alone, and resamples each key once;
3. :func:`resample_steps` does that one resampling: the voxel maps are multiplied into one map
   (:func:`composed_maps`), and a warping step (one per run) contributes its dense field between
   the maps before and after it (:class:`ChainGeometry`).

Adding a new kind of warping step (a dense field found by a registration, say) is local: name its
entry in :data:`gpuprep.records.WARP_ENTRIES`, its field's builder in ``warp_fields.FIELD_BUILDERS``.

Data follow the **kind** of their key (:func:`gpuprep.get_kind`), never the dtype: intensity
images are interpolated (an integer one becomes float32 when a step interpolates) and padded with
the run's ``padding_value``; label maps are resampled by nearest neighbour or one-hot and padded
with 0.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from ..errors import TransformError
from ..foreign import adopt_foreign, sync_monai_meta_dicts
from ..functional.grid import is_lattice_map
from ..functional.resample import resample, resample_labels
from ..functional.resample_general import GridCache, antialias
from ..functional.warp import warp
from ..records import warp_entry
from ..sample import LABEL, collate, decollate, dtype_kind, get_kind, get_meta, image_keys
from .base import replace_meta
from .intensity_fusion import apply_voxel_fused, joins_voxel_run, voxelwise
from .spatial.padding import fusable_runs, padding_fill, padding_wish
from .warp_fields import FIELD_BUILDERS

if TYPE_CHECKING:
    from .base import Transform
    from .spatial.base import SpatialTransform

__all__ = [
    "ChainGeometry", "Resampling", "apply_fused", "composed_maps", "current_grids",
    "fusion_runs", "resample_chains", "resample_steps",
]

Grid = tuple[tuple[int, ...], np.ndarray]  # (spatial shape, affines [B, 4, 4])
_MODE_ORDER = {"nearest": 0, "linear": 1, "cubic": 2}


# -- which transforms fuse ----------------------------------------------------------------------


def fusion_runs(transforms: Sequence[Transform]) -> list[list[Transform]]:
    """Group consecutive fusable spatial transforms, and consecutive voxel-wise ones, into runs.

    A transform is fusable when it is spatial and its grid does not depend on the data
    (``SpatialTransform.fusable``). A run holds at most one warping transform (``warps``), and
    never a warp together with cubic interpolation. Voxel-wise intensity transforms form runs of
    their own (:func:`~gpuprep.transforms.intensity_fusion.joins_voxel_run`). Every other
    transform stands alone.

    Example
    -------
    >>> import gpuprep as gp
    >>> steps = [gp.Flip("image", 0), gp.Resample("image", 2.0), gp.RandGamma("image"), gp.RandNoise("image")]
    >>> [len(run) for run in fusion_runs(steps + [gp.ZNormalize("image")])]
    [2, 2, 1]
    """
    runs: list[list[Any]] = []
    for transform in transforms:
        spatial = runs and _fusable(transform) and _fusable(runs[-1][-1]) and not _conflict(transform, runs[-1])
        if spatial or (runs and joins_voxel_run(transform, runs[-1])):
            runs[-1].append(transform)
        else:
            runs.append([transform])
    return runs


def _fusable(transform: Any) -> bool:
    # Only SpatialTransform defines ``fusable`` (this module sits below it, so it cannot isinstance-check).
    return bool(getattr(transform, "spatial", False) and getattr(transform, "fusable", False))


def _conflict(transform: Any, run: list[Any]) -> bool:
    """One resampling applies at most one displacement field, and a field only with linear interpolation."""
    if transform.warps:
        return any(t.warps or t.mode == "cubic" for t in run)
    return transform.mode == "cubic" and any(t.warps for t in run)


# -- planning a run and recording it -------------------------------------------------------------


def current_grids(batch: Mapping, keys: Sequence[str]) -> dict[str, Grid]:
    """The grid ``(shape, affines [B, 4, 4])`` of each key of a batch.

    A key without metadata raises :class:`~gpuprep.errors.MissingKeyError` saying how to give it some.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> batch = gp.collate([gp.make_sample({"image": torch.zeros(1, 2, 3, 4)})])
    >>> current_grids(batch, ["image"])["image"][0]
    (2, 3, 4)
    """
    return {k: (tuple(int(s) for s in batch[k].shape[-3:]), get_meta(batch, k)["affine"].numpy()) for k in keys}


def apply_fused(transforms: Sequence[Transform], data: Mapping, recorded: Sequence[tuple] | None = None) -> dict:
    """Apply consecutive spatial transforms with a single resampling per key.

    Each transform plans its step on the grid the previous one would have produced; the maps
    are multiplied, and the data are resampled once with the highest interpolation order of the
    chain (anti-aliased if any step asks for it). Every transform still appends its own record,
    so the history is the same as without fusion. The records of ``n > 1`` steps resampled
    together are marked ``"fused": {"index": i, "count": n}``, so that :func:`gpuprep.replay` can
    resample them together again. Steps that pad intensity images with different values are not
    fused with each other (see :func:`~gpuprep.transforms.spatial.padding.fusable_runs`). Voxel-wise runs: see
    :func:`~gpuprep.transforms.intensity_fusion.apply_voxel_fused`.

    Parameters
    ----------
    transforms:
        The spatial transforms of the run, in order (each a
        :class:`~gpuprep.transforms.spatial.base.SpatialTransform`).
    data:
        A sample or a batch.
    recorded:
        For replay: per transform, ``(keys, params, extras)`` from its history records (one params
        dict and one dict of other record fields per sample); nothing is planned or drawn then,
        and the transforms are resampled together as they were (their records say so).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 6, 6, 6)})
    >>> out = apply_fused([gp.Flip("image", 0), gp.Resample("image", 2.0)], s)
    >>> [r["fused"] for r in gp.get_history(out)]
    [{'index': 0, 'count': 2}, {'index': 1, 'count': 2}]
    """
    if voxelwise(transforms[0]):
        return apply_voxel_fused(transforms, data, recorded)
    if recorded is None:
        runs = fusable_runs(cast("Sequence[SpatialTransform]", transforms))  # a run holds spatial transforms
        if len(runs) > 1:
            for run in runs:
                data = _apply_fused_run(run, data) if len(run) > 1 else run[0](data)
            return dict(data)
    return _apply_fused_run(transforms, data, recorded)


def _apply_fused_run(transforms: Sequence[Any], data: Mapping, recorded: Sequence[tuple] | None = None) -> dict:
    if recorded is not None and len(recorded) != len(transforms):
        raise TransformError(f"apply_fused: got {len(recorded)} recorded steps for {len(transforms)} transforms")
    if recorded is None:
        keys_present = [t._present_keys(data) for t in transforms]
    else:
        keys_present = [list(keys) for keys, _, _ in recorded]
    all_keys = list(dict.fromkeys(k for keys in keys_present for k in keys))
    if not all_keys:
        return dict(data)
    data = adopt_foreign(data, all_keys, "apply_fused")
    single = not (data[all_keys[0]].ndim == 5)
    batch = collate([data]) if single else dict(data)
    planned = _plan_run(transforms, keys_present, batch, recorded)
    chains: dict[str, list[tuple[SpatialTransform, list[dict]]]] = {k: [] for k in all_keys}
    for transform, keys, params, _ in planned:
        for key in keys:
            chains[key].append((transform, [p[key] for p in params]))
    resample_chains(batch, chains)
    for index, (transform, keys, params, extras) in enumerate(planned):
        if recorded is None and len(planned) > 1:
            extras = [{**extra, "fused": {"index": index, "count": len(planned)}} for extra in extras]
        batch = transform._record(batch, keys, params, extras)
    return sync_monai_meta_dicts(decollate(batch)[0] if single else batch)


def _plan_run(transforms, keys_present, batch, recorded) -> list[tuple[Any, list[str], list[dict], list[dict]]]:
    """Each transform's ``(transform, keys, params, extras)``, planned on the grids its predecessors produce."""
    grids = current_grids(batch, [*dict.fromkeys(k for keys in keys_present for k in keys), *image_keys(batch)])
    planned = []
    for position, (transform, keys) in enumerate(zip(transforms, keys_present)):
        if not keys:
            continue
        if recorded is None:
            params = transform.plan(grids, batch, keys)
            extras = transform.record_extras(len(params))
        else:
            _, params, extras = recorded[position]
        planned.append((transform, keys, params, extras))
        for key in keys:
            steps = [p[key] for p in params]
            grids[key] = (tuple(steps[0]["out_shape"]), np.stack([np.asarray(s["out_affine"]) for s in steps]))
    return planned


# -- resampling a chain --------------------------------------------------------------------------


@dataclass(frozen=True)
class Resampling:
    """How one key is resampled through a chain of steps.

    Parameters
    ----------
    mode:
        Interpolation of intensity images: ``"nearest"``, ``"linear"`` or ``"cubic"``.
    anti_aliasing:
        Smooth images before downsampling.
    padding_mode:
        ``"zeros"`` (a constant outside the input) or ``"border"`` (the nearest edge value).
    label_mode:
        ``"nearest"`` or ``"onehot"`` (each label's mask interpolated linearly, then the argmax).
    padding_value:
        The constant of ``"zeros"`` padding for images: a number or ``"minimum"``; labels get 0.

    Example
    -------
    >>> Resampling(mode="linear", padding_value=-1000.0).padding_mode
    'zeros'
    """

    mode: str = "nearest"
    anti_aliasing: bool = False
    padding_mode: str = "zeros"
    label_mode: str = "nearest"
    padding_value: float | str = 0.0

    @classmethod
    def of_chain(cls, chain: Sequence[tuple[Any, list[dict]]]) -> Resampling:
        """What the transforms of a chain ``[(transform, steps), ...]`` agree on.

        The highest interpolation order among the steps that do not map voxel centres onto voxel
        centres, anti-aliasing if any asks for it, border padding only if all that look outside
        ask for it, one-hot labels if any asks for them.
        """
        modes = [t.mode or "nearest" for t, steps in chain if not _is_exact(steps)]
        wishes = [wish for wish in (padding_wish(t) for t, _ in chain) if wish is not None]
        values = [wish for wish in wishes if wish != "border"]
        return cls(
            mode=max(modes, key=_MODE_ORDER.__getitem__) if modes else "nearest",
            anti_aliasing=any(t.anti_aliasing for t, _ in chain),
            padding_mode="border" if wishes and all(w == "border" for w in wishes) else "zeros",
            label_mode="onehot" if any(t.label_mode == "onehot" for t, _ in chain) else "nearest",
            padding_value=values[0] if values else 0.0,
        )


def resample_chains(batch: dict, chains: Mapping[str, Sequence[tuple[Any, list[dict]]]]) -> None:
    """Resample each key of ``batch`` once through its chain ``[(transform, per-sample steps), ...]``; set affines.

    The keys share one :class:`~gpuprep.functional.resample_general.GridCache`: those moved by
    the same maps (an image and its label maps) build one sampling grid and one warp field.
    """
    cache = GridCache()
    for key, chain in chains.items():
        if not chain:
            continue
        last = chain[-1][1]
        shapes = {tuple(s["out_shape"]) for s in last}
        if len(shapes) > 1:
            raise TransformError(
                f"key {key!r}: the samples of this batch would get different shapes {sorted(shapes)}; "
                "resample them one by one or to a common grid"
            )
        batch[key] = resample_steps(batch[key], [steps for _, steps in chain], shapes.pop(),
                                    how=Resampling.of_chain(chain), kind=get_kind(batch, key), cache=cache)
        replace_meta(batch, key, affine=torch.from_numpy(np.stack([np.asarray(s["out_affine"]) for s in last])))


def resample_steps(volume: torch.Tensor, chain: Sequence[Sequence[Mapping]], out_shape: Sequence[int], *,
                   how: Resampling, kind: str | None = None, cache: GridCache | None = None) -> torch.Tensor:
    """Resample ``[B, C, D, H, W]`` once through a chain of steps (per position, the list of per-sample steps).

    ``kind`` (``"image"`` or ``"label"``; None: the dtype rule) decides how: images with
    ``how.mode`` (integer ones become float32 unless it is ``"nearest"``) padded with
    ``how.padding_value``; labels by nearest neighbour or one-hot, padded with 0. ``cache`` (a
    :class:`~gpuprep.functional.resample_general.GridCache`) lets keys moved alike share grids.

    Example
    -------
    >>> import numpy as np, torch
    >>> from gpuprep.records import make_step
    >>> flip = make_step((4, 1, 1), np.eye(4), (4, 1, 1), [[-1, 0, 0, 3], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    >>> volume = torch.arange(4.0).reshape(1, 1, 4, 1, 1)
    >>> resample_steps(volume, [[flip]], (4, 1, 1), how=Resampling(mode="linear")).flatten().tolist()
    [3.0, 2.0, 1.0, 0.0]
    """
    geometry = ChainGeometry.of(chain, volume.device, cache)
    if geometry.field is not None and how.mode == "cubic":
        raise TransformError("cubic interpolation cannot be fused with an elastic step; use mode='linear'")
    if (kind or dtype_kind(volume)) != LABEL:
        if not volume.is_floating_point() and how.mode != "nearest":
            volume = volume.float()  # an interpolated integer image (CT, MRI) becomes float32
        fill = padding_fill(volume, how.padding_value) if how.padding_mode == "zeros" else 0.0
        return geometry.sample(volume, out_shape, mode=how.mode, padding_mode=how.padding_mode, fill=fill,
                               anti_aliasing=how.anti_aliasing)
    if how.label_mode == "onehot" and how.mode != "nearest" and not geometry.lattice:
        sample_mask = functools.partial(geometry.sample, out_shape=out_shape, mode="linear",
                                        padding_mode=how.padding_mode)
        return resample_labels(volume, geometry.maps, out_shape, "linear", how.padding_mode, sampler=sample_mask)
    return geometry.sample(volume, out_shape, mode="nearest", padding_mode=how.padding_mode)


def composed_maps(chain: Sequence[Sequence[Mapping]], size: int) -> np.ndarray:
    """Per sample, the product of a chain's voxel maps ``[size, 4, 4]`` (the identity for an empty chain).

    The first step's map is on the left: an output voxel goes through the last step's map first.

    Example
    -------
    >>> scale = {"voxel_map": np.diag([2.0, 2.0, 2.0, 1.0]).tolist()}
    >>> composed_maps([[scale], [scale]], 1)[0].diagonal().tolist()
    [4.0, 4.0, 4.0, 1.0]
    """
    maps = []
    for index in range(size):
        product = np.eye(4)
        for steps in reversed(chain):  # right to left, as numpy.linalg.multi_dot orders square matrices
            product = np.dot(np.asarray(steps[index]["voxel_map"], dtype=np.float64), product)
        maps.append(product)
    return np.stack(maps)


@dataclass(frozen=True, eq=False)
class ChainGeometry:
    """Where each output voxel of a chain samples its input: voxel maps, and a warp field between them.

    Without a warping step the chain is one map per sample (``before``). With one, an output
    voxel goes through ``after`` (the steps after the warp), the field, then ``before`` (the steps
    up to and including the warp's own map).
    """

    before: np.ndarray
    field: torch.Tensor | None = None
    after: np.ndarray | None = None
    field_key: tuple | None = None
    cache: GridCache | None = None

    @classmethod
    def of(cls, chain: Sequence[Sequence[Mapping]], device: torch.device,
           cache: GridCache | None = None) -> ChainGeometry:
        """The geometry of a chain (per position, the per-sample steps); its field is built on ``device``.

        ``cache`` keeps the field and the sampling grids for the next key moved by the same chain.
        """
        size = len(chain[0])
        warped = [position for position, steps in enumerate(chain) if any(warp_entry(s) for s in steps)]
        if len(warped) > 1:
            raise TransformError("one resampling can apply one elastic step: Compose splits its runs so, and "
                                 "gp.invert cannot yet undo a history with two elastic steps for one key")
        if not warped:
            return cls(before=composed_maps(chain, size), cache=cache)
        position = warped[0]
        before, after = composed_maps(chain[: position + 1], size), composed_maps(chain[position + 1:], size)
        steps = chain[position]
        entry = next(e for e in map(warp_entry, steps) if e is not None)
        field_key = ("field", before.tobytes(), after.tobytes(), repr([s.get(entry) for s in steps]),
                     repr([s.get("inverse") for s in steps]), str(device))
        build = functools.partial(FIELD_BUILDERS[entry], steps, device)
        field = build() if cache is None else cache.get(field_key, build)
        return cls(before=before, field=field, after=after, field_key=field_key, cache=cache)

    @property
    def maps(self) -> np.ndarray:
        """The voxel maps of the whole chain with the field left out ``[B, 4, 4]``."""
        return self.before if self.after is None else self.before @ self.after

    @property
    def lattice(self) -> bool:
        """Whether every output voxel centre falls on an input voxel centre (no interpolation needed)."""
        return self.field is None and all(is_lattice_map(m) for m in self.maps)

    def sample(self, volume: torch.Tensor, out_shape: Sequence[int], *, mode: str, padding_mode: str,
               fill: float | torch.Tensor = 0.0, anti_aliasing: bool = False) -> torch.Tensor:
        """Sample ``volume`` ``[B, C, D, H, W]`` at the chain's points; ``fill`` outside under ``"zeros"``."""
        if self.field is None or self.after is None:
            return resample(volume, self.maps, out_shape, mode, anti_aliasing, padding_mode, fill, cache=self.cache)
        if anti_aliasing:
            volume = antialias(volume, self.maps)
        if isinstance(fill, torch.Tensor) or fill != 0.0:  # a constant c outside: warp(x - c) + c
            return self.sample(volume - fill, out_shape, mode=mode, padding_mode=padding_mode) + fill
        return warp(volume, self.before, self.field, self.after, out_shape, mode, padding_mode,
                    cache=self.cache, field_key=self.field_key)


def _is_exact(steps: Sequence[Mapping]) -> bool:
    """Whether per-sample steps move voxel centres onto voxel centres (they need no interpolation)."""
    return all(is_lattice_map(np.asarray(s["voxel_map"])) and warp_entry(s) is None for s in steps)
