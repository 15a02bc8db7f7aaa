"""A dataset fingerprint: what every file's grid, orientation and intensities are, and their summaries.

:func:`fingerprint_dataset` reads every image (and label map) of a list of records with
:func:`gpuprep.io.reader.read_image` and records, per file: shape, spacing, orientation (axis
codes), dtype, anisotropy (largest over smallest spacing), modality and the intensity statistics
inside the foreground; per case (record): the spacing and shape along the R, A, S axes (the grid
after reorientation to RAS) and the shape after cropping to the foreground; and dataset-level
summaries, from which :mod:`gpuprep.data.planning` chooses a pipeline. The planning rules are
nnU-Net v2's (``nnunetv2/experiment_planning/dataset_fingerprint/fingerprint_extractor.py``):

- the foreground of the intensity statistics is the label map's voxels above 0 (nnU-Net's rule);
  without a label map, the voxels above the image's Otsu threshold;
- dataset statistics (mean, standard deviation, 0.5/50/99.5 percentiles) are computed from the
  same number of foreground voxels of every case, so that cases weigh equally, as in nnU-Net;
  :data:`SAMPLES_TOTAL` = 10^7 voxels in all (40 MB; at most 10^6 per case) instead of nnU-Net's
  10^8, but drawn without replacement (a case with fewer foreground voxels gives all of them, repeated), which
  has less sampling noise than nnU-Net's draws with replacement;
- two crops per case: nnU-Net's (the bounding box of the voxels that are not 0 in any image,
  ``nonzero_shape_ras``: for a CT, where air is -1000, usually the whole scan), which the
  planning rules use, and the pipeline's (``crop_shape_ras``: the first image's voxels above
  :data:`CROP_THRESHOLD`, 0 for MRI, the same box for images that are never negative, and
  -500 HU for CT, the body), which gives the shapes the pipeline's output will have.

Modality: the BIDS suffix of the file name (``_CT`` is CT, ``_T1w``, ``_T2w``, ``_FLAIR``... MRI),
else the intensities: CT when at least 1 % of the voxels are at or below -900 (air is -1000 HU;
MRI intensities are not negative) and the values span at least 1000.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import ConfigError, DatasetError
from ..functional.grid import spacing_of
from ..functional.orientation import axcodes_of, orientation_transform
from ..functional.threshold import otsu_threshold
from ..io.reader import read_image
from .records import is_image_path, parse_bids_name

FINGERPRINT_FORMAT = 1
#: Foreground voxels sampled over the whole dataset for the dataset intensity statistics ...
SAMPLES_TOTAL = 10**7
#: ... and at most this many per case (a small dataset needs no more).
SAMPLES_PER_CASE = 10**6
SAMPLE_SEED = 1234
MODALITIES = ("ct", "mri")
#: The crop to the foreground keeps the first image's voxels above this value.
CROP_THRESHOLD = {"ct": -500.0, "mri": 0.0}
#: BIDS suffixes of MRI images (suffix ``CT`` means CT).
MRI_SUFFIXES = frozenset({"T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2", "PDT2", "angio",
                          "T1map", "T2map", "UNIT1", "MP2RAGE", "dwi", "bold", "epi", "MTw", "T1rho"})
CT_AIR_HU = -900.0
CT_MIN_AIR_FRACTION = 0.01
CT_MIN_SPAN = 1000.0
#: Record keys taken for the label map, in this order, when no label key is named.
LABEL_KEYS = ("label", "seg", "dseg", "labels", "mask")
_PERCENTILES = {"percentile_00_5": 0.5, "percentile_05": 5.0, "percentile_50": 50.0, "percentile_95": 95.0,
                "percentile_99_5": 99.5}


def bids_modality(path: str | Path) -> str | None:
    """The modality a BIDS file name states by its suffix: ``"ct"``, ``"mri"`` or None (no BIDS suffix known).

    Example
    -------
    >>> bids_modality("sub-01_ses-1_CT.nii.gz"), bids_modality("sub-01_T1w.nii.gz"), bids_modality("scan.nii")
    ('ct', 'mri', None)
    """
    try:
        _, suffix = parse_bids_name(Path(path).name)
    except DatasetError:
        return None
    return "ct" if suffix == "CT" else "mri" if suffix in MRI_SUFFIXES else None


def intensity_modality(values: np.ndarray) -> tuple[str, str]:
    """Tell CT from MRI by the intensities: ``(modality, reason)``.

    CT (Hounsfield units) when at least :data:`CT_MIN_AIR_FRACTION` of the voxels are at or
    below :data:`CT_AIR_HU` (air) and the values span at least :data:`CT_MIN_SPAN`; else MRI.

    Parameters
    ----------
    values:
        The image's voxels (any shape).

    Example
    -------
    >>> ct = np.concatenate([np.full(500, -1000.0), np.full(400, 40.0), np.full(100, 1200.0)])
    >>> intensity_modality(ct)[0], intensity_modality(np.abs(ct))[0]
    ('ct', 'mri')
    """
    flat = np.asarray(values).reshape(-1)
    air = float(np.mean(flat <= CT_AIR_HU)) if flat.size else 0.0
    span = float(flat.max()) - float(flat.min()) if flat.size else 0.0  # in float: int16 would overflow
    ct = air >= CT_MIN_AIR_FRACTION and span >= CT_MIN_SPAN
    rule = f"{100 * air:.1f}% of voxels <= {CT_AIR_HU:g}, span {span:.6g}"
    return ("ct", f"intensities: {rule} (Hounsfield units)") if ct else ("mri", f"intensities: {rule} (not CT)")


def ras_order(affine: Any) -> list[int]:
    """The file's voxel axis along each of the R, A, S axes (the axes after reorientation to RAS).

    Example
    -------
    >>> ras_order(np.array([[0, 0, -1, 0], [1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]]))  # PIL
    [2, 0, 1]
    """
    ornt = orientation_transform(np.asarray(affine, dtype=np.float64), "RAS")
    return [int(i) for i in np.argsort(ornt[:, 0])]


def intensity_stats(values: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation (population), min, max and the 0.5/5/50/95/99.5 percentiles of ``values``.

    Empty input gives NaN everywhere (the JSON then holds ``NaN``).

    Example
    -------
    >>> stats = intensity_stats(np.arange(201.0))
    >>> stats["mean"], stats["percentile_00_5"], stats["percentile_99_5"]
    (100.0, 1.0, 199.0)
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return {name: float("nan") for name in ("mean", "std", "min", "max", *_PERCENTILES)}
    ranks = np.percentile(values, list(_PERCENTILES.values()))
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()), **{name: float(v) for name, v in zip(_PERCENTILES, ranks)}}


def _otsu_foreground(volume: torch.Tensor) -> np.ndarray:
    """The voxels above the image's Otsu threshold (any channel), ``[D, H, W]``."""
    values = volume.float()[None]
    threshold = otsu_threshold(values)[0]
    return (values[0] > threshold).any(dim=0).numpy()


def _box_shape(inside: np.ndarray) -> list[int]:
    """Spatial extent of the bounding box of ``inside`` ``[D, H, W]``; the whole grid when it is empty."""
    extents = []
    for axis in range(3):
        hits = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        extents.append(int(hits[-1] - hits[0] + 1) if hits.size else int(inside.shape[axis]))
    return extents if inside.any() else list(inside.shape)


def draw_samples(values: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` of ``values`` (float32) without replacement; all of them, cycled in a random order, if fewer.

    Example
    -------
    >>> sorted(draw_samples(np.array([1.0, 2.0, 3.0]), 6, seed=0).tolist())
    [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    """
    values = np.asarray(values).reshape(-1)
    if values.size == 0:
        return np.zeros(0, np.float32)
    rng = np.random.default_rng(seed)
    if count >= values.size:
        picked = np.resize(rng.permutation(values.size), count)
    else:
        picked = rng.choice(values.size, count, replace=False)
    return values[picked].astype(np.float32)


def _read_label(path: str, image_path: str, shape: Sequence[int], affine: np.ndarray) -> tuple[np.ndarray, dict]:
    """The label map ``[D, H, W]`` (int64) with its entry; refused when its grid is not the image's or not integer."""
    data, meta = read_image(path)
    if tuple(data.shape[1:]) != tuple(shape) or data.shape[0] != 1:
        raise DatasetError(f"label {path}: shape {tuple(data.shape)} does not match image {image_path} "
                           f"(1 channel, spatial shape {tuple(shape)})")
    if not np.allclose(meta["affine"].numpy(), affine, atol=1e-3):
        raise DatasetError(f"label {path}: its affine differs from that of image {image_path} by more than "
                           f"1e-3 (the label map must lie on the image's grid)")
    if data.is_floating_point() and not bool(torch.all(data == torch.round(data))):
        raise DatasetError(f"label {path}: a label map must hold whole numbers, found fractional values")
    labels = data[0].to(torch.int64)
    values = sorted(int(v) for v in torch.unique(labels))
    return labels.numpy(), {"path": path, "labels": values, "foreground_voxels": int((labels > 0).sum())}


def _file_entry(path: str, data: torch.Tensor, affine: np.ndarray, modality: str, reason: str) -> dict:
    """The geometry part of a file's entry."""
    spacing = spacing_of(affine)
    return {"path": path, "shape": [int(n) for n in data.shape[1:]], "channels": int(data.shape[0]),
            "spacing": [float(s) for s in spacing], "orientation": axcodes_of(affine),
            "dtype": str(data.dtype).removeprefix("torch."), "anisotropy": float(spacing.max() / spacing.min()),
            "modality": modality, "modality_reason": reason}


def _modality(path: str, values: np.ndarray, forced: str | None) -> tuple[str, str]:
    """The file's modality and why: forced, from the BIDS suffix, or from the intensities."""
    if forced is not None:
        return forced, "given (modality argument, --modality)"
    stated = bids_modality(path)
    if stated is not None:
        return stated, f"BIDS suffix of {Path(path).name}"
    return intensity_modality(values)


def fingerprint_case(record: Mapping[str, Any], image_keys: Sequence[str], label_key: str | None,
                     modality: Mapping[str, str] | None = None, samples: int = 10_000, seed: int = SAMPLE_SEED
                     ) -> tuple[dict, dict]:
    """Fingerprint one record: its files' entries, its RAS grid and crop, and foreground samples per image key.

    Parameters
    ----------
    record:
        Key to file path (plus any other values).
    image_keys:
        The intensity images; the first one defines the grid and the crop.
    label_key:
        The label map's key, or None.
    modality:
        Key to ``"ct"``/``"mri"`` to force; keys left out are detected (see :func:`bids_modality`).
    samples, seed:
        Foreground voxels drawn per image key for the dataset statistics (:func:`draw_samples`).

    Returns
    -------
    The case's entry and, per image key, the drawn foreground voxels (float32).

    Example
    -------
    >>> import nibabel as nib, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "ct.nii.gz"
    >>> volume = np.full((8, 8, 4), -1000, np.int16); volume[2:6, 2:7, 1:3] = 1200
    >>> nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 3.0, 1])), path)
    >>> case, drawn = fingerprint_case({"image": str(path)}, ["image"], None, samples=5)
    >>> case["files"]["image"]["modality"], case["crop_shape_ras"], drawn["image"].shape
    ('ct', [4, 5, 2], (5,))
    """
    forced = dict(modality or {})
    files, drawn, first, nonzero = {}, {}, None, None
    label, label_entry = None, None
    for key in image_keys:
        data, meta = read_image(record[key])
        affine = meta["affine"].numpy()
        values = data.numpy()
        chosen, reason = _modality(record[key], values, forced.get(key))
        entry = _file_entry(record[key], data, affine, chosen, reason)
        if first is None:
            first = (data, affine, entry)
            if label_key is not None:
                label, label_entry = _read_label(record[label_key], record[key], data.shape[1:], affine)
        elif entry["shape"] != first[2]["shape"]:
            raise DatasetError(f"{record[key]}: spatial shape {tuple(entry['shape'])} differs from that of "
                               f"{first[2]['path']} {tuple(first[2]['shape'])} in the same record")
        found = (data != 0).any(dim=0)
        nonzero = found if nonzero is None else nonzero | found
        inside = label > 0 if label is not None else _otsu_foreground(data)
        foreground = values[:, inside].reshape(-1)
        entry.update(foreground="label > 0" if label is not None else "above the Otsu threshold",
                     foreground_voxels=int(inside.sum()), intensity=intensity_stats(foreground))
        drawn[key] = draw_samples(foreground, samples, seed)
        files[key] = entry
    assert first is not None and nonzero is not None
    return _case_geometry(files, first, nonzero.numpy(), label_entry, label_key), drawn


def _case_geometry(files: dict, first: tuple, nonzero: np.ndarray, label_entry: dict | None,
                   label_key: str | None) -> dict:
    """The case entry: files, spacing and shapes along R, A, S, the two crops and the nonzero crop's relative size."""
    data, affine, entry = first
    order = ras_order(affine)
    crop = _box_shape((data > CROP_THRESHOLD[entry["modality"]]).any(dim=0).numpy())
    boxed = _box_shape(nonzero)
    case: dict[str, Any] = {"files": files, "spacing_ras": [entry["spacing"][i] for i in order],
                            "shape_ras": [entry["shape"][i] for i in order], "crop_shape_ras": [crop[i] for i in order],
                            "nonzero_shape_ras": [boxed[i] for i in order],
                            "relative_size_after_crop": float(np.prod(boxed) / np.prod(entry["shape"]))}
    if label_key is not None:
        case["label"] = {"key": label_key, **(label_entry or {})}
    return case


def fingerprint_dataset(records: Sequence[Mapping[str, Any]], label_key: str | None = None,
                        modality: str | Mapping[str, str] | None = None,
                        progress: Callable[[int, int], None] | None = None) -> dict:
    """Fingerprint a dataset: every case (see :func:`fingerprint_case`) and the dataset summaries.

    Parameters
    ----------
    records:
        The cases, e.g. from :func:`~gpuprep.data.records.records_from_folder`; the keys holding
        image paths other than the label key are the intensity images (channels).
    label_key:
        The label map's key; None takes the first of :data:`LABEL_KEYS` found in the records.
    modality:
        ``"ct"`` or ``"mri"`` for every image key, a dict key -> modality, or None to detect.
    progress:
        Called with ``(cases done, cases)`` after each case.

    Example
    -------
    >>> import nibabel as nib, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for i, z in enumerate([2.0, 3.0]):
    ...     nib.save(nib.Nifti1Image(np.ones((6, 6, 4), np.float32), np.diag([1, 1, z, 1])), root / f"{i}_T1w.nii")
    >>> fp = fingerprint_dataset([{"image": str(root / f"{i}_T1w.nii")} for i in range(2)])
    >>> fp["dataset"]["modality"], fp["dataset"]["spacing_ras"]["median"]
    ({'image': 'mri'}, [1.0, 1.0, 2.5])
    """
    if not records:
        raise DatasetError("fingerprint_dataset: no records (no image found)")
    label_key = label_key if label_key is not None else next((k for k in LABEL_KEYS if k in records[0]), None)
    if label_key is not None and label_key not in records[0]:
        raise ConfigError(f"label key {label_key!r} is not a key of the records; they have {sorted(records[0])}")
    image_keys = [k for k, v in records[0].items() if k != label_key and is_image_path(v)]
    if not image_keys:
        raise DatasetError(f"no image key in the records (keys {sorted(records[0])}; values must be image paths)")
    forced = _forced_modalities(modality, image_keys)
    per_case = max(1, min(SAMPLES_PER_CASE, SAMPLES_TOTAL // len(records)))
    cases: list[dict] = []
    drawn: dict[str, list[np.ndarray]] = {key: [] for key in image_keys}
    for index, record in enumerate(records):
        case, samples = fingerprint_case(record, image_keys, label_key, forced, per_case, SAMPLE_SEED + index)
        cases.append(case)
        for key in image_keys:
            drawn[key].append(samples[key])
        if progress is not None:
            progress(index + 1, len(records))
    return {"gpuprep_fingerprint": FINGERPRINT_FORMAT, "gpuprep_version": __version__, "image_keys": image_keys,
            "label_key": label_key, "cases": cases, "dataset": summarize(cases, image_keys, drawn)}


def _forced_modalities(modality: str | Mapping[str, str] | None, image_keys: Sequence[str]) -> dict[str, str]:
    """Key -> forced modality, checked."""
    given = {} if modality is None else dict.fromkeys(image_keys, modality) if isinstance(modality, str) \
        else dict(modality)
    for key, value in given.items():
        if value not in MODALITIES:
            raise ConfigError(f"modality of {key!r} must be one of {MODALITIES}, got {value!r}")
    return given


def summarize(cases: Sequence[Mapping], image_keys: Sequence[str], drawn: Mapping[str, list]) -> dict:
    """Dataset summaries of the case entries: modality per key, spacing and shape statistics, intensities, labels.

    Files of one key that disagree on the modality raise :class:`~gpuprep.errors.ConfigError`
    naming one file of each (give the modality instead).

    Example
    -------
    >>> case = {"files": {"image": {"modality": "mri", "path": "a.nii", "anisotropy": 3.0}}, "spacing_ras": [1, 1, 3],
    ...         "shape_ras": [10, 10, 4], "crop_shape_ras": [5, 10, 4], "nonzero_shape_ras": [5, 10, 4],
    ...         "relative_size_after_crop": 0.5}
    >>> summarize([case], ["image"], {"image": [np.ones(3)]})["median_relative_size_after_crop"]
    0.5
    """
    spacings = np.array([c["spacing_ras"] for c in cases], dtype=np.float64)
    modality = {key: _one_modality(cases, key) for key in image_keys}
    intensity = {}
    for key in image_keys:
        pooled = np.concatenate(drawn[key]) if drawn[key] else np.zeros(0)
        stats = intensity_stats(pooled)
        intensity[key] = {k: stats[k] for k in ("mean", "std", "min", "max", "percentile_00_5", "percentile_50",
                                                "percentile_99_5")} | {"samples": int(pooled.size)}
    labels = sorted({v for c in cases for v in c.get("label", {}).get("labels", [])})
    median = np.median(spacings, axis=0)
    return {
        "cases": len(cases), "modality": modality,
        "spacing_ras": {"median": median.tolist(), "percentile_10": np.percentile(spacings, 10, axis=0).tolist(),
                        "min": spacings.min(axis=0).tolist(), "max": spacings.max(axis=0).tolist()},
        "shape_ras": {"median": np.median([c["shape_ras"] for c in cases], axis=0).tolist()},
        "crop_shape_ras": {"median": np.median([c["crop_shape_ras"] for c in cases], axis=0).tolist()},
        "nonzero_shape_ras": {"median": np.median([c["nonzero_shape_ras"] for c in cases], axis=0).tolist()},
        "median_relative_size_after_crop": float(np.median([c["relative_size_after_crop"] for c in cases])),
        "anisotropy": {"median_spacing_ratio": float(median.max() / median.min()),
                       "files_over_3": int(sum(f["anisotropy"] > 3 for c in cases for f in c["files"].values()))},
        "intensity": intensity, "labels": labels,
    }


def _one_modality(cases: Sequence[Mapping], key: str) -> str:
    """The modality shared by every file of ``key``; mixed ones raise, naming an example of each."""
    found: dict[str, str] = {}
    for case in cases:
        entry = case["files"][key]
        found.setdefault(entry["modality"], entry["path"])
    if len(found) > 1:
        examples = ", ".join(f"{m}: {p}" for m, p in sorted(found.items()))
        raise ConfigError(f"image key {key!r}: files disagree on the modality (e.g. {examples}); one pipeline "
                          f"normalises one modality: give the modality (--modality ct or mri) or split the dataset")
    return next(iter(found))
