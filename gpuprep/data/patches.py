"""Random patch sampling for training: :class:`RandPatches` (uniform, label-balanced, weighted).

``RandPatches`` turns a sample or a batch of ``B`` samples into a batch of ``B * num_patches``
patches (sample-major). Each patch keeps world coordinates: its affine is the source affine
shifted to the patch corner. Every other per-sample entry (file names, ``sample_index``, the
history, keys that are not cropped) is repeated per patch, so :func:`gpuprep.decollate` works,
and ``"patch_index"`` gives each patch's number within its sample.

The record of a patch holds its ``source`` (position in the input batch), ``patch`` number,
``start`` corner (JSON ints, in the source's voxels), ``pad`` (voxels of zero padding per axis,
``[before, after]``, for axes shorter than the patch), for the data-driven samplers the drawn
``center`` (and ``class`` for the label sampler), and, per key, the crop as a spatial step
(a translation voxel map), so :func:`gpuprep.invert` puts a patch prediction back into the full
grid and :func:`gpuprep.replay` cuts the same patch again without drawing.

Patches are drawn from each sample's own stream (seed, epoch, ``sample_index``), so a sample
gets the same patches whatever the batch it is in. The uniform sampler needs no data. The label
and weighted samplers pick voxels on the data's device (per-class cumulative counts or
cumulative weights searched with the stream's uniform numbers) and copy the chosen corners to
the host once per call (a ``[B, N, 8]`` integer tensor), because the record and the slicing
need them as integers.

RandPatches changes the batch size, so it is not a
:class:`~gpuprep.transforms.spatial.base.SpatialTransform` (Compose would fuse it into a
resampling, which keeps the batch size); it only declares itself ``spatial`` and ``invertible``
so that ``gp.invert`` undoes its record like a crop. ``OneOf``/``SomeOf`` cannot hold it.
Samples of a batch must share their spatial shape (as anywhere in a batch); keys, ``label_key``
and ``weight_key`` must share it too.

Random transforms after RandPatches draw from streams seeded by ``sample_index`` *and*
``"patch_index"`` (see :func:`gpuprep.random.sample_rng`), so each patch of a sample is
augmented with its own parameters.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError, MissingKeyError, TransformError, short_repr
from ..foreign import sync_monai_meta_dicts
from ..functional.grid import translation_map
from ..functional.patch_centers import label_centers, weighted_centers
from ..random.seeding import PATCH_INDEX_KEY
from ..records import make_step
from ..sample import HISTORY_KEY, meta_key, select
from ..transforms.random_base import RandomTransform
from ..validation import check_int_or_three
from .grid_patches import extract_patches

__all__ = ["PATCH_INDEX_KEY", "SAMPLERS", "RandPatches", "collate_patches"]

SAMPLERS = ("uniform", "label", "weighted")
#: The most patches per sample (each one carries its own record, affine and history).
MAX_PATCHES = 10_000
#: The most voxels of all the patches of one sample together (1 GiB of float32 per channel).
MAX_PATCH_VOXELS = 2**28


class RandPatches(RandomTransform):
    """Cut ``num_patches`` random patches of ``size`` from each sample (MONAI/TorchIO patch samplers).

    Parameters
    ----------
    keys:
        Image keys to cut (labels are cut with the images, exactly).
    size:
        Patch shape ``(d, h, w)``, or one int for a cube. An axis of the volume shorter than the
        patch is zero-padded (``diff // 2`` voxels before, the rest after) and recorded.
    num_patches:
        Patches per sample; the output holds ``B * num_patches`` of them, sample-major. At most
        :data:`MAX_PATCHES` (10,000), and ``num_patches`` times the voxels of a patch at most
        :data:`MAX_PATCH_VOXELS` (2^28), checked here before anything is allocated.
    sampler:
        ``"uniform"``: corners uniform over all positions where the patch fits (MONAI's
        ``RandSpatialCropSamples``). ``"label"``: the patch centre is a voxel of ``label_key``
        chosen class by class, with the centre then clamped so the patch fits (MONAI's
        ``RandCropByPosNegLabeld`` / ``RandCropByLabelClassesd``). ``"weighted"``: the centre is
        drawn with probability proportional to ``weight_key`` among the centres whose patch
        fits (MONAI's ``RandWeightedCropd``).
    label_key:
        Label map (``[1, ...]`` integer classes, or ``[K, ...]`` one-hot) for ``sampler="label"``.
    pos_neg_ratio:
        ``(pos, neg)``: a centre is a foreground voxel (``label > 0`` in any channel) with
        probability ``pos / (pos + neg)``, else a background voxel. Default ``(1, 1)``.
    class_ratios:
        Instead of ``pos_neg_ratio``: one weight per class ``0 .. K-1`` (class ``c`` is
        ``label == c``, or channel ``c`` of a one-hot map).
    weight_key:
        Non-negative weight map ``[1, ...]`` for ``sampler="weighted"``.
    seed, allow_missing_keys:
        See :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Notes
    -----
    Classes without voxels in a sample are not drawn (their ratio counts as 0, as in MONAI); a
    sample with no voxel of any class of non-zero ratio raises :class:`TransformError`.
    Negative and non-finite weights count as 0; an all-zero weight map gives uniform centres.
    Two deliberate differences from MONAI's weighted crop: the last valid centre of each axis
    can be drawn (MONAI's valid region stops one short), and along an axis shorter than the
    patch all weights count (MONAI reads only the middle slice).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 10, 10, 10)})
    >>> out = RandPatches("image", size=4, num_patches=3, seed=0)(s)
    >>> out["image"].shape, len(gp.get_history(out))
    (torch.Size([3, 1, 4, 4, 4]), 3)
    >>> corner = gp.get_history(out)[0][-1]["params"]["start"]
    >>> torch.equal(out["image"][0], s["image"][:, corner[0]:corner[0] + 4, corner[1]:corner[1] + 4,
    ...                                               corner[2]:corner[2] + 4])
    True
    """

    spatial = True
    invertible = True

    def __init__(
        self,
        keys: str | Sequence[str],
        size: int | Sequence[int],
        num_patches: int = 1,
        sampler: str = "uniform",
        label_key: str | None = None,
        pos_neg_ratio: Sequence[float] | None = None,
        class_ratios: Sequence[float] | None = None,
        weight_key: str | None = None,
        seed: int | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, p=1.0, seed=seed, allow_missing_keys=allow_missing_keys)
        sizes = check_int_or_three("RandPatches", "size", size, minimum=1)
        if not isinstance(num_patches, int) or isinstance(num_patches, bool) or not 1 <= num_patches <= MAX_PATCHES:
            raise ConfigError(
                f"RandPatches: num_patches must be an integer from 1 to {MAX_PATCHES}, got {short_repr(num_patches)}"
            )
        if num_patches * math.prod(sizes) > MAX_PATCH_VOXELS:  # refused before anything is allocated
            raise ConfigError(
                f"RandPatches: num_patches x patch voxels must be at most {MAX_PATCH_VOXELS} per sample "
                f"(1 GiB of float32 per channel), got {num_patches} x {math.prod(sizes)} for size {sizes}"
            )
        if sampler not in SAMPLERS:
            raise ConfigError(f"RandPatches: sampler must be one of {SAMPLERS}, got {sampler!r}")
        _check_sampler_keys(sampler, label_key, weight_key, pos_neg_ratio, class_ratios)
        self.size = sizes
        self.num_patches = num_patches
        self.sampler = sampler
        self.label_key = label_key
        self.weight_key = weight_key
        self.pos_neg_ratio = pos_neg_ratio
        self.class_ratios = class_ratios
        if sampler == "label":
            if class_ratios is not None:
                self._ratios = _ratios(class_ratios, "class_ratios", 1)
            else:  # classes [background, foreground]
                pos, neg = _ratios((1, 1) if pos_neg_ratio is None else pos_neg_ratio, "pos_neg_ratio", 2, 2)
                self._ratios = [neg, pos]

    # -- calling: the output has num_patches entries per sample --------------------------------

    def __call__(self, data: Mapping) -> dict:
        """Cut the patches of a sample or batch; always returns a batch ``[B * num_patches, C, *size]``."""
        batch, _, keys = self._prepare(data)
        if not keys:
            return dict(data)
        params = self.make_params(batch, keys)
        return sync_monai_meta_dicts(self._record(self.apply_params(batch, keys, params), keys, params))

    def replay(self, data: Mapping, params: Sequence[dict], extras: Sequence[dict] | None = None) -> dict:
        """Cut the recorded patches again (for one sample, every record refers to it, whatever its ``source``)."""
        batch, single, keys = self._prepare(data)
        params = [{k: v for k, v in p.items() if k in _DRAWN} for p in params]
        for entry in params:
            if single:
                entry["source"] = 0
            if not 0 <= int(entry.get("source", -1)) < len(batch[keys[0]]):
                raise TransformError(f"RandPatches.replay: source {entry.get('source')} is not a sample of a "
                                     f"batch of {len(batch[keys[0]])}")
        out = self._record(self.apply_params(batch, keys, params), keys, params, extras or [{} for _ in params])
        return sync_monai_meta_dicts(out)

    # -- the two steps ------------------------------------------------------------------------

    def make_params(self, batch: dict, keys: list[str]) -> list[dict]:
        shape = self._common_shape(batch, keys)
        streams = self._streams(batch, keys)
        if self.sampler == "uniform":
            return [self._uniform(rng, shape, source, index)
                    for source, rng in enumerate(streams) for index in range(self.num_patches)]
        draws = torch.tensor([[[rng.random() for _ in range(2 if self.sampler == "label" else 1)]
                               for _ in range(self.num_patches)] for rng in streams], dtype=torch.float64)
        if self.sampler == "label":
            assert self.label_key is not None  # checked in __init__ for this sampler
            found = label_centers(batch[self.label_key], draws, self._ratios, self.class_ratios is None,
                                   self.size, self.label_key)
        else:
            assert self.weight_key is not None  # checked in __init__ for this sampler
            found = weighted_centers(batch[self.weight_key], draws[..., 0], self.size, self.weight_key)
        rows = found.cpu().tolist()  # the one device-to-host copy: [B, N, 8] integers
        params = []
        for source, sample_rows in enumerate(rows):
            for index, row in enumerate(sample_rows):
                if not row[7]:
                    raise TransformError(
                        f"RandPatches: {self.label_key!r} of sample {source} has no voxel of any class with a "
                        f"non-zero ratio (ratios per class {self._ratios}); cannot place a patch"
                    )
                entry = {"source": source, "patch": index, "start": row[:3], "center": row[3:6]}
                if self.sampler == "label":
                    entry["class"] = row[6]
                params.append(entry)
        return params

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        shape = self._common_shape(batch, keys, data_keys=False)
        sources = [int(p["source"]) for p in params]
        starts = [[int(c) for c in p["start"]] for p in params]
        for entry, start in zip(params, starts):
            entry["pad"] = _padding(start, self.size, shape)
        out = select({k: v for k, v in batch.items() if k not in keys}, sources)
        for key in keys:
            out[key] = extract_patches(batch[key], sources, starts, self.size)
            affines = batch[meta_key(key)]["affine"].numpy()
            steps = [make_step(shape, affines[s], self.size, translation_map(start))
                     for s, start in zip(sources, starts)]
            for entry, step in zip(params, steps):
                entry[key] = step
            out[meta_key(key)] = {
                **out[meta_key(key)],
                "affine": torch.from_numpy(np.stack([np.asarray(s["out_affine"]) for s in steps])),
            }
        out[PATCH_INDEX_KEY] = [int(p["patch"]) for p in params]
        out.setdefault(HISTORY_KEY, [[] for _ in params])
        return out

    # -- helpers --------------------------------------------------------------------------------

    def _uniform(self, rng: random.Random, shape, source: int, index: int) -> dict:
        start = [rng.randint(0, n - s) if n > s else -((s - n) // 2) for n, s in zip(shape, self.size)]
        return {"source": source, "patch": index, "start": start}

    def _common_shape(self, batch: Mapping, keys: list[str], data_keys: bool = True) -> tuple[int, ...]:
        names = list(keys)
        if data_keys:
            names += [k for k in (self.label_key, self.weight_key) if k is not None and k not in names]
        for name in names:
            if name not in batch:
                raise MissingKeyError(f"RandPatches: key {name!r} not found in the sample; it has "
                                      f"{sorted(map(str, batch))}")
        shapes = {name: tuple(int(n) for n in batch[name].shape[-3:]) for name in names}
        if len(set(shapes.values())) > 1:
            raise TransformError(f"RandPatches: keys must share their spatial shape, got {shapes}")
        return shapes[names[0]]


_DRAWN = ("source", "patch", "start", "pad", "center", "class")


def _check_sampler_keys(sampler, label_key, weight_key, pos_neg_ratio, class_ratios) -> None:
    needs = {"label": ("label_key", label_key), "weighted": ("weight_key", weight_key)}
    if sampler in needs and (not isinstance(needs[sampler][1], str) or not needs[sampler][1]):
        raise ConfigError(f"RandPatches: sampler={sampler!r} needs {needs[sampler][0]} (a key), "
                          f"got {needs[sampler][1]!r}")
    for name, value, owner in (("label_key", label_key, "label"), ("weight_key", weight_key, "weighted"),
                               ("pos_neg_ratio", pos_neg_ratio, "label"), ("class_ratios", class_ratios, "label")):
        if value is not None and sampler != owner:
            raise ConfigError(f"RandPatches: {name} is only used with sampler={owner!r}, got it with "
                              f"sampler={sampler!r}: {value!r}")
    if pos_neg_ratio is not None and class_ratios is not None:
        raise ConfigError(f"RandPatches: give pos_neg_ratio or class_ratios, not both (got {pos_neg_ratio!r} "
                          f"and {class_ratios!r})")


def _ratios(values, name: str, minimum: int, maximum: int | None = None) -> list[float]:
    items = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else None
    valid = items is not None and minimum <= len(items) <= (maximum or len(items)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0 for v in items)
    if items is None or not valid or sum(items) <= 0:
        count = f"{minimum}" if maximum == minimum else f"at least {minimum}"
        raise ConfigError(f"RandPatches: {name} must be {count} non-negative numbers with a positive sum, "
                          f"got {values!r}")
    return [float(v) for v in items]


def _padding(start, size, shape) -> list[list[int]]:
    return [[max(0, -c), max(0, c + s - n)] for c, s, n in zip(start, size, shape)]


def collate_patches(batches: Sequence[Mapping]) -> dict:
    """Join batches (e.g. the patches of several samples) into one: a DataLoader ``collate_fn``.

    Use it when :class:`RandPatches` runs in the dataset's workers, so each item is already a
    batch of patches: tensors are concatenated along the batch dimension, lists joined, and
    metadata dicts joined key by key.

    Example
    -------
    >>> import gpuprep as gp
    >>> s = gp.make_sample({"image": torch.rand(1, 6, 6, 6)})
    >>> patches = RandPatches("image", 4, num_patches=2, seed=0)
    >>> collate_patches([patches(s), patches(s)])["image"].shape
    torch.Size([4, 1, 4, 4, 4])
    """
    if not batches:
        raise ValueError("collate_patches: got an empty list of batches")
    keys = list(batches[0])
    for index, batch in enumerate(batches[1:], start=1):
        if set(batch) != set(keys):
            raise TransformError(f"collate_patches: batch {index} has keys {sorted(batch)}, batch 0 has {sorted(keys)}")
    return {key: _join([b[key] for b in batches], key) for key in keys}


def _join(values: list, key: str):
    first = values[0]
    if isinstance(first, torch.Tensor):
        shapes = {tuple(v.shape[1:]) for v in values}
        if len(shapes) > 1:
            raise TransformError(f"collate_patches: key {key!r} has different shapes {sorted(shapes)}")
        return torch.cat(values)
    if isinstance(first, Mapping):
        return {k: _join([v[k] for v in values], f"{key}.{k}") for k in first}
    if isinstance(first, list):
        return [item for value in values for item in value]
    raise TransformError(f"collate_patches: key {key!r} holds {type(first).__name__}, not a batch entry")
