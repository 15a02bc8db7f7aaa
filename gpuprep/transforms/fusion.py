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
from ..functional.resample import resample_labels
from ..functional.resample_general import GridCache
from ..records import warp_entry
from ..sample import LABEL, collate, decollate, dtype_kind, get_kind, get_meta, image_keys
from .base import replace_meta
from .chain_geometry import ChainGeometry, composed_maps
from .intensity_fusion import apply_voxel_fused, joins_voxel_run, voxelwise
from .spatial.padding import fusable_runs, padding_fill, padding_wish

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
    never a warp together with cubic interpolation. A transform that reads its input's data to
    plan its step (``reads_data``, such as registration) can only start a run. Voxel-wise
    intensity transforms form runs of their own
    (:func:`~gpuprep.transforms.intensity_fusion.joins_voxel_run`). Every other transform stands alone.

    Example
    -------
    >>> import gpuprep as gp
    >>> steps = [gp.Flip("image", 0), gp.Resample("image", 2.0), gp.RandGamma("image"), gp.RandNoise("image")]
    >>> [len(run) for run in fusion_runs(steps + [gp.ZNormalize("image")])]
    [2, 2, 1]
    """
    runs: list[list[Any]] = []
    for transform in transforms:
        spatial = (runs and _fusable(transform) and not getattr(transform, "reads_data", False)
                   and _fusable(runs[-1][-1]) and not _conflict(transform, runs[-1]))
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
    paired = _resample_images_with_labels(batch, chains, cache)
    for key, chain in chains.items():
        if not chain or key in paired:
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


def _resample_images_with_labels(batch: dict, chains: Mapping[str, Sequence[tuple[Any, list[dict]]]],
                                 cache: GridCache) -> set[str]:
    """Resample an image and a label map moved by the same chain in one pass where the kernel can; the keys done.

    An image interpolated linearly, padded with 0 or its border, and a label map by nearest
    neighbour or one-hot (see :meth:`ChainGeometry.sample_with_labels`); the results are those of
    :func:`resample_steps` on each.
    """
    done: set[str] = set()
    labels = [key for key, chain in chains.items() if chain and get_kind(batch, key) == LABEL]
    for key, chain in chains.items():
        how = Resampling.of_chain(chain) if chain and key not in labels else None
        if how is None or how.mode != "linear" or how.anti_aliasing or (
                how.padding_mode == "zeros" and how.padding_value != 0):
            continue
        steps = [s for _, s in chain]
        geometry = ChainGeometry.of(steps, batch[key].device, cache)
        out_shape = tuple(chain[-1][1][0]["out_shape"])
        for label in (k for k in labels if k not in done and len(chains[k]) == len(chain)):
            other = ChainGeometry.of([s for _, s in chains[label]], batch[label].device, cache)
            if (other.field_key != geometry.field_key or tuple(chains[label][-1][1][0]["out_shape"]) != out_shape
                    or not np.array_equal(other.maps, geometry.maps)):
                continue
            image = batch[key] if batch[key].is_floating_point() else batch[key].float()
            pair = geometry.sample_with_labels(image, batch[label], out_shape, padding_mode=how.padding_mode,
                                               onehot=how.label_mode == "onehot" and not geometry.lattice)
            if pair is not None:
                batch[key], batch[label] = pair
                for done_key in (key, label):
                    last = chains[done_key][-1][1]
                    affines = np.stack([np.asarray(s["out_affine"]) for s in last])
                    replace_meta(batch, done_key, affine=torch.from_numpy(affines))
                done |= {key, label}
            break
    return done


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
    if geometry.warped and how.mode == "cubic":
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


def _is_exact(steps: Sequence[Mapping]) -> bool:
    """Whether per-sample steps move voxel centres onto voxel centres (they need no interpolation)."""
    return all(is_lattice_map(np.asarray(s["voxel_map"])) and warp_entry(s) is None for s in steps)
