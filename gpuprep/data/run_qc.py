"""Quality control of a dataset run: numbers, warnings and a montage per input, and the run's QC page.

For each input, :func:`qc_numbers` measures the primary output image (its shape, voxel spacing and
intensity range) and the volume of its mask (the first label key the pipeline made, else the first
label key, e.g. ``ForegroundMask``'s ``foreground``), and warns about non-finite voxels, a constant
image and an empty mask. :func:`qc_entry` adds a montage (the input as loaded above the output,
:func:`gpuprep.io.qc_report.write_montage`) under ``<output>/qc/``, mirroring the input's path, and
:func:`write_index` makes ``<output>/qc/index.html`` (:func:`gpuprep.io.qc_report.write_qc_index`,
which flags outliers of the mask volume).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run_jobs import Job, JobResult

QC_FOLDER = "qc"
OUTLIER_KEY = "mask_volume_ml"


def qc_numbers(sample: Mapping, key: str, record_keys: Sequence[str] = ()) -> tuple[dict, list[str]]:
    """The QC numbers of image ``key`` of ``sample`` and its mask, and warnings about them.

    Parameters
    ----------
    sample:
        The pipeline's result.
    key:
        The image measured.
    record_keys:
        The input's keys: a label key not among them (made by the pipeline) is preferred as the mask.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> image = torch.zeros(1, 4, 4, 4); mask = torch.zeros(1, 4, 4, 4, dtype=torch.uint8); mask[:, :2] = 1
    >>> sample = gp.make_sample({"image": image, "mask": mask}, affine=torch.diag(torch.tensor([2.0, 2, 2, 1])),
    ...                         labels=["mask"])
    >>> numbers, warnings = qc_numbers(sample, "image")
    >>> numbers["shape"], numbers["spacing_mm"], numbers["mask_volume_ml"], warnings
    ('4x4x4', '2x2x2', 0.256, ['image is constant (0)'])
    """
    import torch

    from ..sample import get_affine, get_kind, image_keys

    image = sample[key].detach()
    affine = get_affine(sample, key).double()
    spacing = affine[:3, :3].norm(dim=0).tolist()
    finite = image[torch.isfinite(image)] if image.is_floating_point() else image
    numbers: dict[str, float | int | str] = {
        "shape": "x".join(str(n) for n in image.shape[1:]),
        "spacing_mm": "x".join(f"{s:.3g}" for s in spacing),
    }
    warnings = []
    if finite.numel() < image.numel():
        warnings.append(f"{key} has {image.numel() - finite.numel()} non-finite voxels (NaN or Inf)")
    if finite.numel():
        numbers["min"], numbers["max"] = float(finite.min()), float(finite.max())
        if numbers["min"] == numbers["max"]:
            warnings.append(f"{key} is constant ({numbers['min']:g})")
    labels = [k for k in image_keys(sample) if get_kind(sample, k) == "label"]
    labels.sort(key=lambda k: k in record_keys)
    if labels:
        mask = labels[0]
        voxel_ml = abs(float(torch.linalg.det(get_affine(sample, mask).double()[:3, :3]))) / 1000.0
        voxels = int(sample[mask].count_nonzero())
        numbers["mask_key"] = mask
        numbers[OUTLIER_KEY] = round(voxels * voxel_ml, 3)
        if voxels == 0:
            warnings.append(f"empty mask ({mask} has no voxel)")
    return numbers, warnings


def qc_entry(job: Job, sample: Mapping, before: tuple | None) -> dict:
    """The QC of one finished job: ``{"numbers", "warnings", "montage"}`` (the montage relative to the QC folder)."""
    from ..io.qc_report import write_montage
    from ..io.sidecar import strip_image_extension
    from ..sample import get_affine

    numbers, warnings = qc_numbers(sample, job.primary, list(job.record))
    relative = Path(job.relative)
    montage = relative.parent / f"{strip_image_extension(relative.name)}.png"
    rows = [] if before is None else [("input", before[0].cpu(), before[1])]
    rows.append(("output", sample[job.primary].detach().cpu(), get_affine(sample, job.primary)))
    write_montage(Path(job.run_dir) / QC_FOLDER / montage, rows)
    return {"numbers": numbers, "warnings": warnings, "montage": montage.as_posix()}


def write_index(results: Sequence[JobResult], output: Path) -> Path:
    """Write ``output/qc/index.html`` for the results of a run (failed inputs listed with their error)."""
    from ..io.qc_report import QCEntry, write_qc_index

    entries = []
    for result in sorted(results, key=lambda r: r.index):
        qc: dict[str, Any] = result.qc or {}
        entries.append(QCEntry(
            source=result.source, output=result.outputs[0] if result.outputs else None,
            montage=qc.get("montage"), numbers=qc.get("numbers", {}), warnings=qc.get("warnings", []),
            error=None if result.error is None else f"{result.step}: {result.error}"))
    return write_qc_index(entries, output / QC_FOLDER, outlier_key=OUTLIER_KEY)
