"""Choose a preprocessing pipeline from a dataset fingerprint with nnU-Net v2's planning rules.

:func:`plan_dataset` turns a fingerprint (:func:`gpuprep.data.fingerprint.fingerprint_dataset`)
into a :class:`Plan`: the target spacing, the normalisation of every image key, a patch size
and batch size for a 3D U-Net that fit a GPU's memory, and the pipeline (a
:class:`~gpuprep.Compose` of real gpuprep transforms): reorientation to RAS, a crop to the
foreground, the normalisation, and resampling to the target spacing. The rules follow nnU-Net v2
(``nnunetv2/experiment_planning/experiment_planners/default_experiment_planner.py``,
``.../network_topology.py`` and ``nnunetv2/preprocessing/normalization/default_normalization_schemes.py``):

- target spacing: the median spacing per axis; when the coarsest axis is more than
  :data:`ANISOTROPY_THRESHOLD` times the next coarsest and has fewer than a third of the voxels
  of the others (median shapes after nnU-Net's crop to the nonzero voxels), its target is the 10th percentile of its
  spacings, but never finer than the other axes;
- CT: clip to the dataset's foreground 0.5-99.5 percentiles, subtract the foreground mean and
  divide by the foreground standard deviation; MRI (anything else): per-image z-score, over the
  nonzero voxels when cropping to them shrinks the median image below 3/4 (else the whole image);
- patch size: nnU-Net's search, from the median shape of the pipeline's output (after its crop,
  which for CT is the body, and resampling), with nnU-Net's memory model:
  the sum, over every convolution of its plain 3D U-Net (32 features doubling per level up to 320,
  two convolutions per level, pooling until the feature maps are 4 voxels wide), of features x
  voxels must stay below 5.6e8 x GB / 8 (nnU-Net's reference for a batch of 2 in 8 GB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..transforms.compose import Compose
from ..transforms.intensity import Clip, ScaleIntensityRange, ZNormalize
from ..transforms.spatial import CropForeground, Orientation, Resample
from .fingerprint import CROP_THRESHOLD

ANISOTROPY_THRESHOLD = 3.0
#: nnU-Net's ``UNet_reference_val_3d``: the feature-map voxels that fit ``REFERENCE_GB`` for a batch of 2.
REFERENCE_FEATURE_VOXELS = 560_000_000
REFERENCE_GB = 8.0
BASE_FEATURES, MAX_FEATURES, MIN_EDGE = 32, 320, 4
MIN_BATCH, MAX_DATASET_COVERED = 2, 0.05
#: Below this median relative size after the crop, MRI z-scores use the nonzero voxels only.
MASK_FOR_NORM_BELOW = 0.75
#: The U-Net's first patch, before the search shrinks it: this many voxels, in the aspect of the spacing.
INITIAL_PATCH_VOXELS = 256**3


def target_spacing(spacings: Any, shapes: Any, threshold: float = ANISOTROPY_THRESHOLD) -> np.ndarray:
    """nnU-Net's target spacing: the median per axis, with its rule for one much coarser axis.

    Parameters
    ----------
    spacings, shapes:
        Per case ``[N, 3]``: the spacing and the shape after the crop to the nonzero voxels, along the same axes.
    threshold:
        The anisotropy threshold (nnU-Net's ``ANISO_THRESHOLD``).

    Example
    -------
    >>> spacings = [[0.8, 0.8, z] for z in (2.5, 3.0, 3.0, 4.0, 5.0)]
    >>> target_spacing(spacings, [[64, 64, 20]] * 5).round(3).tolist()
    [0.8, 0.8, 2.7]
    """
    spacings, shapes = np.asarray(spacings, dtype=np.float64), np.asarray(shapes, dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    size = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    coarse_spacing = target[worst] > threshold * max(target[others])
    few_voxels = size[worst] * threshold < min(size[others])
    if coarse_spacing and few_voxels:
        chosen = np.percentile(spacings[:, worst], 10)
        if chosen < max(target[others]):  # never finer than the other axes (nnU-Net adds 1e-5)
            chosen = max(target[others]) + 1e-5
        target[worst] = chosen
    return target


def pool_topology(spacing: Any, patch: Any, min_edge: int = MIN_EDGE) -> tuple[list[list[int]], list[int], list[int]]:
    """nnU-Net's U-Net topology for a patch: pooling strides per level, the padded patch and its divisors.

    An axis is pooled while its feature map stays at least ``2 * min_edge`` voxels and its
    spacing is within a factor 2 of the finest; the patch is then padded up to a multiple of
    ``2 ** pools`` along each axis (``get_pool_and_conv_props``).

    Example
    -------
    >>> strides, patch, divisors = pool_topology([3.0, 0.8, 0.8], [20, 64, 64])
    >>> len(strides), patch, divisors
    (5, [20, 64, 64], [4, 16, 16])
    """
    current_spacing, current_size = [float(s) for s in spacing], [float(n) for n in patch]
    pools = [0, 0, 0]
    strides = [[1, 1, 1]]
    while True:
        valid = [i for i in range(3) if current_size[i] >= 2 * min_edge]
        if not valid:
            break
        finest = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / finest < 2]
        if len(valid) == 1 and current_size[valid[0]] < 3 * min_edge:
            break
        strides.append([2 if i in valid else 1 for i in range(3)])
        for i in valid:
            pools[i] += 1
            current_spacing[i] *= 2
            current_size[i] = float(np.ceil(current_size[i] / 2))
    divisors = [2**p for p in pools]
    padded = [int(np.ceil(n / d) * d) for n, d in zip(patch, divisors)]
    return strides, padded, divisors


def feature_map_voxels(patch: Any, strides: list[list[int]], num_classes: int) -> int:
    """The memory model: features x voxels summed over the plain 3D U-Net's convolution outputs.

    Per level ``s`` with ``f_s = min(32 * 2**s, 320)`` features on ``V_s`` voxels: two encoder
    convolutions (``2 f_s V_s``) and, except at the bottom, two decoder convolutions and the
    transposed convolution (``3 f_s V_s``), plus the ``num_classes`` outputs on the full patch.
    Equal to nnU-Net's ``PlainConvUNet.compute_conv_feature_map_size`` (without deep supervision).

    Example
    -------
    >>> strides = pool_topology([1.0, 1.0, 1.0], [128, 128, 128])[0]
    >>> feature_map_voxels([128, 128, 128], strides, 3)
    452796416
    """
    voxels, size = [], [int(n) for n in patch]
    for stride in strides:
        size = [n // k for n, k in zip(size, stride)]
        voxels.append(int(np.prod(size, dtype=np.int64)))
    features = [min(BASE_FEATURES * 2**s, MAX_FEATURES) for s in range(len(strides))]
    encoder = sum(2 * f * v for f, v in zip(features, voxels))
    decoder = sum(3 * f * v for f, v in zip(features[:-1], voxels[:-1]))
    return int(encoder + decoder + num_classes * voxels[0])


def _search_order(spacing: np.ndarray) -> list[int]:
    """The axis order of nnU-Net's search: the coarsest axis first, then the rest from S to R.

    nnU-Net works on the arrays SimpleITK gives (S, A, R for a RAS file) with the coarsest axis
    moved first; the same order here breaks ties between equal axes the same way.
    """
    order = [2, 1, 0]
    coarsest = order[int(np.argmax(spacing[order]))]
    return [coarsest] + [axis for axis in order if axis != coarsest]


def patch_size(spacing: Any, median_shape: Any, gpu_memory_gb: float, num_classes: int = 2
               ) -> tuple[list[int], list[int], int]:
    """nnU-Net's patch-size search: ``(patch, divisors, feature-map voxels)`` for a budget of ``gpu_memory_gb``.

    Start from :data:`INITIAL_PATCH_VOXELS` in the aspect of the spacing, clipped to the median
    shape; while :func:`feature_map_voxels` exceeds the budget, shrink the axis largest relative
    to the median shape by one divisor step. Axes are in the order of ``spacing``.

    Example
    -------
    >>> patch, divisors, _ = patch_size([1.0, 1.0, 1.0], [200, 200, 200], 8.0)
    >>> patch, divisors
    ([128, 128, 128], [32, 32, 32])
    """
    spacing, median_shape = np.asarray(spacing, dtype=np.float64), np.asarray(median_shape, dtype=np.float64)
    order = _search_order(spacing)
    spacing, median = spacing[order], median_shape[order]
    budget = REFERENCE_FEATURE_VOXELS * gpu_memory_gb / REFERENCE_GB
    inverse = 1 / spacing
    initial = [round(float(i)) for i in inverse * (INITIAL_PATCH_VOXELS / np.prod(inverse)) ** (1 / 3)]
    start = [min(float(i), float(m)) for i, m in zip(initial, median)]  # clipped to the median shape
    strides, patch, divisors = pool_topology(spacing, start)
    estimate = feature_map_voxels(patch, strides, num_classes)
    while estimate > budget:
        axis = int(np.argsort([p / m for p, m in zip(patch, median)])[-1])
        trial = list(patch)
        trial[axis] -= divisors[axis]
        if trial[axis] < 1:
            raise ConfigError(f"--gpu-memory-gb {gpu_memory_gb:g}: too little memory for any patch (a U-Net on "
                              f"{patch} voxels needs about {estimate / budget * gpu_memory_gb:.2g} GB)")
        step = pool_topology(spacing, trial)[2]
        patch[axis] -= step[axis]
        strides, patch, divisors = pool_topology(spacing, patch)
        estimate = feature_map_voxels(patch, strides, num_classes)
    back = np.argsort(order)
    return [int(patch[i]) for i in back], [int(divisors[i]) for i in back], estimate


def batch_size(estimate: int, patch: Any, median_shape: Any, cases: int, gpu_memory_gb: float) -> int:
    """nnU-Net's batch size: what the memory left allows, at most 5 % of the dataset's voxels, at least 2.

    Example
    -------
    >>> batch_size(100_000_000, [64, 64, 64], [200, 200, 200], 100, 8.0)
    11
    """
    budget = REFERENCE_FEATURE_VOXELS * gpu_memory_gb / REFERENCE_GB
    by_memory = round(budget / estimate * MIN_BATCH)
    dataset_voxels = float(np.prod(median_shape, dtype=np.float64)) * cases
    by_dataset = round(dataset_voxels * MAX_DATASET_COVERED / float(np.prod(patch, dtype=np.float64)))
    return int(max(min(by_memory, by_dataset), MIN_BATCH))


def normalization(fingerprint: dict) -> dict[str, dict]:
    """The normalisation of every image key from the fingerprint (nnU-Net's schemes).

    Example
    -------
    >>> fp = {"image_keys": ["image"], "dataset": {"modality": {"image": "mri"},
    ...       "median_relative_size_after_crop": 0.5, "intensity": {}}}
    >>> normalization(fp)
    {'image': {'scheme': 'ZScoreNormalization', 'use_mask_for_norm': True}}
    """
    dataset, out = fingerprint["dataset"], {}
    use_mask = dataset["median_relative_size_after_crop"] < MASK_FOR_NORM_BELOW
    for key in fingerprint["image_keys"]:
        if dataset["modality"][key] == "mri":
            out[key] = {"scheme": "ZScoreNormalization", "use_mask_for_norm": bool(use_mask)}
            continue
        stats = dataset["intensity"][key]
        if not all(np.isfinite(stats[k]) for k in ("mean", "std", "percentile_00_5", "percentile_99_5")):
            raise ConfigError(f"image key {key!r}: CT normalisation needs foreground intensities, but no case has "
                              f"foreground voxels (empty labels?)")
        if stats["std"] <= 0:
            raise ConfigError(f"image key {key!r}: the foreground intensities are constant ({stats['mean']:g}); "
                              f"CT normalisation divides by their standard deviation, which must be > 0")
        out[key] = {"scheme": "CTNormalization", "use_mask_for_norm": False, "mean": stats["mean"],
                    "std": stats["std"], "percentile_00_5": stats["percentile_00_5"],
                    "percentile_99_5": stats["percentile_99_5"]}
    return out


def build_pipeline(image_keys: list[str], label_key: str | None, norms: dict[str, dict], spacing: Any,
                   crop_threshold: float) -> Compose:
    """The planned pipeline: RAS, the crop to the foreground, the normalisation, resampling to ``spacing``.

    Spatial steps move the label map too; they skip it when absent (``allow_missing_keys``), so
    the same pipeline preprocesses images without labels. Images are resampled with cubic
    B-splines (nnU-Net: order 3), label maps one label at a time (one-hot linear, nnU-Net's order 1).

    Example
    -------
    >>> norms = {"image": {"scheme": "ZScoreNormalization", "use_mask_for_norm": False}}
    >>> [type(t).__name__ for t in build_pipeline(["image"], "label", norms, [1, 1, 3], 0.0).transforms]
    ['Orientation', 'CropForeground', 'ZNormalize', 'Resample']
    """
    keys = [*image_keys, *([label_key] if label_key is not None else [])]
    optional = label_key is not None
    steps: list = [Orientation(keys, axcodes="RAS", allow_missing_keys=optional),
                   CropForeground(keys, source_key=image_keys[0], threshold=crop_threshold,
                                  allow_missing_keys=optional)]
    for key in image_keys:
        norm = norms[key]
        if norm["scheme"] == "CTNormalization":
            steps += [Clip(key, min=norm["percentile_00_5"], max=norm["percentile_99_5"]),
                      ScaleIntensityRange(key, a_min=norm["mean"], a_max=norm["mean"] + norm["std"])]
        else:
            mask = "nonzero" if norm["use_mask_for_norm"] else None
            steps.append(ZNormalize(key, mask=mask, unbiased=False, keep_outside=norm["use_mask_for_norm"]))
    steps.append(Resample(keys, spacing=[float(s) for s in spacing], mode="cubic", anti_aliasing=False,
                          label_mode="onehot", allow_missing_keys=optional))
    return Compose(steps)


@dataclass
class Plan:
    """What :func:`plan_dataset` chose (axes in RAS order), with the pipeline that applies it."""

    target_spacing: list[float]
    normalization: dict[str, dict]
    median_shape: list[float]
    patch_size: list[int]
    divisible_by: list[int]
    batch_size: int
    feature_map_voxels: int
    gpu_memory_gb: float
    pipeline: Compose = field(repr=False)

    def summary(self) -> dict:
        """The plan as JSON/YAML types, without the pipeline."""
        return {"rules": "nnU-Net v2 ExperimentPlanner (3d_fullres)", "axes": "R, A, S (after reorientation)",
                "target_spacing": self.target_spacing, "normalization": self.normalization,
                "median_shape_after_resampling": self.median_shape, "patch_size": self.patch_size,
                "divisible_by": self.divisible_by, "batch_size": self.batch_size,
                "feature_map_voxels": self.feature_map_voxels, "gpu_memory_gb": self.gpu_memory_gb}


def plan_dataset(fingerprint: dict, gpu_memory_gb: float = 8.0) -> Plan:
    """Plan the preprocessing of a fingerprinted dataset (see the module docstring for the rules).

    Parameters
    ----------
    fingerprint:
        The output of :func:`gpuprep.data.fingerprint.fingerprint_dataset` (or its JSON file, loaded).
    gpu_memory_gb:
        The GPU memory the U-Net's training may use, in GB (nnU-Net's default: 8).

    Example
    -------
    >>> case = {"spacing_ras": [0.8, 0.8, 3.0], "crop_shape_ras": [64, 64, 20], "nonzero_shape_ras": [64, 64, 20]}
    >>> fp = {"image_keys": ["image"], "label_key": None, "cases": [case] * 3,
    ...       "dataset": {"modality": {"image": "mri"}, "median_relative_size_after_crop": 1.0, "labels": []}}
    >>> plan = plan_dataset(fp)
    >>> plan.target_spacing, plan.patch_size, plan.normalization["image"]["use_mask_for_norm"]
    ([0.8, 0.8, 3.0], [64, 64, 20], False)
    """
    if not isinstance(gpu_memory_gb, (int, float)) or isinstance(gpu_memory_gb, bool) or not gpu_memory_gb > 0:
        raise ConfigError(f"gpu_memory_gb must be a number > 0 (GB), got {gpu_memory_gb!r}")
    cases = fingerprint["cases"]
    spacings = np.array([c["spacing_ras"] for c in cases], dtype=np.float64)
    spacing = target_spacing(spacings, [c["nonzero_shape_ras"] for c in cases])
    shapes = np.array([c["crop_shape_ras"] for c in cases], dtype=np.float64)
    resampled = [[round(s / t * n) for s, t, n in zip(sp, spacing, sh)] for sp, sh in zip(spacings, shapes)]
    median = np.median(resampled, axis=0)
    classes = max(2, len(fingerprint["dataset"].get("labels", [])))
    patch, divisors, estimate = patch_size(spacing, median, float(gpu_memory_gb), classes)
    batch = batch_size(estimate, patch, median, len(cases), float(gpu_memory_gb))
    norms = normalization(fingerprint)
    first = fingerprint["image_keys"][0]
    crop = CROP_THRESHOLD[fingerprint["dataset"]["modality"][first]]
    pipeline = build_pipeline(list(fingerprint["image_keys"]), fingerprint["label_key"], norms, spacing, crop)
    return Plan([float(s) for s in spacing], norms, [float(m) for m in median], patch, divisors, batch, estimate,
                float(gpu_memory_gb), pipeline)
