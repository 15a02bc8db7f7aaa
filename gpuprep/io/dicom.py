"""DICOM series: gather the files of one series and check their slice positions before reading.

ITK (and so SimpleITK, MONAI's and TorchIO's readers) stacks the files of a series in the order
GDCM sorts them and gives the volume one slice spacing; when a slice is missing, the gaps are
unequal or two echoes share one Series Instance UID, it only prints "Non uniform sampling or
missing slices detected" on stderr, and slices land millimetres away from where the scanner put
them. Here every file's header (Image Position and Orientation (Patient), Echo Number, Echo Time,
Acquisition Number; no pixel data) is read first, the positions are projected onto the slice
normal and the gaps compared, as dcm2niix does ("Interslice distance varies in this volume",
``nii_dicom_batch.cpp``), and a bad series is refused (or, with ``dicom_check="warn"``, read with
a warning) with a message that names the folder, what is wrong and at which slice positions.

A gantry tilt (every slice shifted sideways by the same step) is read with a sheared affine that
puts every slice where its Image Position says, instead of where ITK's orthogonal grid puts it.

Tolerance: a gap may differ from the typical (median) gap by at most ``min(0.2 mm, 10 %)`` of it.
dcm2niix uses an absolute 0.2 mm (``isSameFloatT(dx, ..., 0.2)``); the 10 % bound keeps the check
meaningful for sub-millimetre slices, where a missing slice changes a gap by less than 0.2 mm.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ImageReadError

#: Values of ``dicom_check``: refuse a series whose slices are not evenly stacked, or warn and read it.
DICOM_CHECKS = ("error", "warn")
#: Largest allowed deviation of a gap from the typical gap: ``min(ABSOLUTE_MM, RELATIVE * gap)``.
GAP_TOLERANCE_MM = 0.2
GAP_TOLERANCE_RELATIVE = 0.1
#: Two slices closer than this along the normal share a position (DICOM DS values carry ~1e-5 mm).
SAME_POSITION_MM = 1e-2
_SHOWN = 4  # how many places a message lists

_TAGS = {
    "series_uid": "0020|000e",
    "position": "0020|0032",
    "orientation": "0020|0037",
    "echo_number": "0018|0086",
    "echo_time": "0018|0081",
    "acquisition": "0020|0012",
    "description": "0008|103e",
}


@dataclass
class SliceHeader:
    """What the slice check needs from one DICOM file's header."""

    path: Path
    tags: dict[str, str]

    @property
    def position(self) -> np.ndarray | None:
        return _numbers(self.tags.get("position"), 3)

    @property
    def orientation(self) -> np.ndarray | None:
        return _numbers(self.tags.get("orientation"), 6)


def check_dicom_check(value: Any, owner: str = "read_image") -> str:
    """Return ``value`` if it is a valid ``dicom_check`` (``"error"`` or ``"warn"``); raise :class:`ConfigError`.

    Example
    -------
    >>> check_dicom_check("warn")
    'warn'
    """
    if value not in DICOM_CHECKS:
        raise ConfigError(f"{owner}: dicom_check must be one of {DICOM_CHECKS}, got {value!r}")
    return value


def read_dicom_series(sitk: Any, path: Path, dicom_check: str = "error") -> Any:
    """Read the DICOM series at ``path`` (a folder, or one file of the series) as a SimpleITK image.

    A folder must hold exactly one series. A single file reads **its whole series**: the files
    in the same folder (not its subfolders) with the file's Series Instance UID, as ITK-SNAP and
    3D Slicer do. Before the pixels are read, the slice positions are checked
    (:func:`slice_problems`); a problem raises :class:`ImageReadError` naming the folder, or with
    ``dicom_check="warn"`` a warning, after which the series is read as ITK stacks it.

    Parameters
    ----------
    sitk:
        The SimpleITK module.
    path:
        A folder holding one DICOM series, or one DICOM file.
    dicom_check:
        ``"error"`` (default) or ``"warn"``.

    Example
    -------
    >>> import SimpleITK, pathlib, tempfile
    >>> read_dicom_series(SimpleITK, pathlib.Path(tempfile.mkdtemp()))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gpuprep.errors.ImageReadError: ...: no DICOM series found in this folder
    """
    check_dicom_check(dicom_check)
    folder = path if path.is_dir() else path.parent
    files = series_files(sitk, folder) if path.is_dir() else files_of_series(sitk, path)
    headers = [read_header(sitk, Path(name)) for name in files]
    problems = slice_problems(headers)
    if problems:
        where = f"{folder}: DICOM series {headers[0].tags.get('series_uid') or '(no UID)'} ({len(files)} files)"
        message = f"{where}: {'; '.join(problems)}"
        if dicom_check == "error":
            raise ImageReadError(f"{message}. Re-export or split the series (dcm2niix splits echoes and equalises "
                                 "gaps), or pass dicom_check='warn' to read it as ITK stacks it")
        # stacklevel 6: past read_itk, the reader's helpers and read_image, to the caller of read_image.
        warnings.warn(f"{message}. Reading it anyway (dicom_check='warn'): ITK stacks the slices evenly",
                      stacklevel=6)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    image = reader.Execute()
    if not problems:
        follow_slice_positions(image, headers)
    return image


def follow_slice_positions(image: Any, headers: list[SliceHeader]) -> None:
    """Make the image's slice axis run from the first file's position to the last one's (gantry tilt).

    ITK always stacks slices along the normal of the slice plane; a CT acquired with a tilted
    gantry moves each slice sideways as well, so ITK misplaces every slice but the first. When the
    (already checked, evenly spaced) positions step sideways by more than 1e-4 mm per slice, the
    third direction column and spacing are set to the real step, which the RAS affine then holds
    as a shear. ``headers`` are in the order of the image's slices.
    """
    if image.GetDimension() != 3 or len(headers) < 2 or image.GetSize()[2] != len(headers):
        return
    first, last = headers[0].position, headers[-1].position
    assert first is not None and last is not None  # checked: every slice has a position
    step = (last - first) / (len(headers) - 1)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    normal = direction[:, 2]
    if np.linalg.norm(step - (step @ normal) * normal) <= 1e-4:
        return
    direction[:, 2] = step / np.linalg.norm(step)
    image.SetDirection(direction.ravel().tolist())
    image.SetSpacing((*image.GetSpacing()[:2], float(np.linalg.norm(step))))


def files_of_series(sitk: Any, path: Path) -> list[str]:
    """The files in ``path``'s folder (not subfolders) that share its Series Instance UID, in GDCM's order.

    A file without a UID, or one GDCM does not group, is a series of its own.
    """
    uid = read_header(sitk, path).tags.get("series_uid", "").strip()
    reader = sitk.ImageSeriesReader()
    if not uid or uid not in reader.GetGDCMSeriesIDs(str(path.parent)):
        return [str(path)]
    return list(reader.GetGDCMSeriesFileNames(str(path.parent), uid)) or [str(path)]


def series_files(sitk: Any, folder: Path) -> list[str]:
    """The files of the one series in ``folder``, in GDCM's order; no series, or several, is an error."""
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageReadError(f"{folder}: no DICOM series found in this folder")
    if len(series) > 1:
        described = []
        for series_uid in series:
            names = reader.GetGDCMSeriesFileNames(str(folder), series_uid)
            description = read_header(sitk, Path(names[0])).tags.get("description", "").strip()
            described.append(f"{series_uid} ({len(names)} files{', ' + repr(description) if description else ''})")
        raise ImageReadError(
            f"{folder}: the folder holds {len(series)} DICOM series: {', '.join(described)}; "
            "put each series in its own folder, or read one of its files (which reads that file's series)"
        )
    return list(reader.GetGDCMSeriesFileNames(str(folder), series[0]))


def read_header(sitk: Any, path: Path) -> SliceHeader:
    """Read the tags the slice check needs from one file's header (the pixel data is not read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ImageReadError(f"{path}: not a readable DICOM file (its header cannot be parsed)") from None
    keys = set(reader.GetMetaDataKeys())
    return SliceHeader(path, {name: reader.GetMetaData(tag) for name, tag in _TAGS.items() if tag in keys})


def slice_problems(headers: list[SliceHeader]) -> list[str]:
    r"""Describe what keeps the slices of a series from forming one evenly spaced stack (empty: none).

    Checked: every slice has a position and orientation, one orientation for all, no two slices
    at one position (several echoes or acquisitions under one UID), positions on one line (a
    line off the normal is a gantry tilt, which is fine), and equal gaps within the module's
    tolerance, told apart into missing slices (a gap that is a multiple of the typical one) and unequal spacing.

    Example
    -------
    >>> def header(z):
    ...     return SliceHeader(Path(f"{z}.dcm"), {"position": f"0\\0\\{z}", "orientation": "1\\0\\0\\0\\1\\0"})
    >>> slice_problems([header(z) for z in (0, 2, 4, 6)])
    []
    >>> slice_problems([header(z) for z in (0, 2, 6, 8)])[0]
    'missing slices: 1 slice missing between slice positions 2 and 6 mm (files 2.dcm, 6.dcm) where the spacing is 2 mm'
    """
    if len(headers) < 2:
        return []
    unlocated = [h.path.name for h in headers if h.position is None or h.orientation is None]
    if unlocated:
        return [f"{len(unlocated)} of {len(headers)} files lack Image Position/Orientation (Patient) (0020,0032/0037): "
                f"{_list(unlocated)}"]
    orientations = np.stack([h.orientation for h in headers if h.orientation is not None])  # all set (checked above)
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        distinct = Counter(tuple(np.round(o, 4)) for o in orientations)
        return [f"the slices have {len(distinct)} orientations (0020,0037): "
                f"{_list([f'{list(o)} ({n} files)' for o, n in distinct.items()])}"]
    row, column = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row, column)
    positions = np.stack([h.position for h in headers if h.position is not None])  # all set (checked above)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    names = [headers[i].path.name for i in order]
    problems = []
    duplicates = _duplicates(along, names, [headers[i] for i in order])
    if duplicates:
        return [duplicates]  # the gaps mean nothing while two stacks are interleaved
    # A gantry tilt moves every slice by the same sideways step: the positions still lie on one
    # line, which a (sheared) affine describes exactly. Anything else cannot be one affine.
    offsets = along - along[0]
    lateral = positions - positions[0] - np.outer(offsets, normal)
    tilt = lateral.T @ offsets / max(float(offsets @ offsets), 1e-12)  # sideways mm per mm along the normal
    bend = np.linalg.norm(lateral - np.outer(offsets, tilt), axis=1).max()
    gaps = np.diff(along)
    typical = float(np.median(gaps))
    tolerance = min(GAP_TOLERANCE_MM, GAP_TOLERANCE_RELATIVE * typical)
    if bend > tolerance:
        problems.append(f"the slice positions do not lie on one line: they stray up to {bend:.3g} mm sideways "
                        "from it, which one affine cannot describe")
    off = np.flatnonzero(np.abs(gaps - typical) > tolerance)
    multiples = np.round(gaps[off] / typical)
    missing = [i for i, m in zip(off, multiples) if m >= 2 and abs(gaps[i] - m * typical) <= tolerance]
    uneven = [i for i in off if i not in missing]
    if missing:
        counts = {i: int(np.rint(gaps[i] / typical)) - 1 for i in missing}
        places = [f"{counts[i]} slice{'s' if counts[i] > 1 else ''} missing between slice positions "
                  f"{along[i]:.4g} and {along[i + 1]:.4g} mm (files {names[i]}, {names[i + 1]})" for i in missing]
        problems.append(f"missing slices: {_list(places)} where the spacing is {typical:.4g} mm")
    if uneven:
        places = [f"{gaps[i]:.4g} mm between {along[i]:.4g} and {along[i + 1]:.4g} mm ({names[i]}, {names[i + 1]})"
                  for i in uneven]
        problems.append(f"unequal slice spacing: typical gap {typical:.4g} mm, but {_list(places)}")
    if missing or uneven:
        even = along[0] + np.arange(len(along)) * (along[-1] - along[0]) / (len(along) - 1)
        problems.append(f"stacked with one averaged spacing, slices would land up to "
                        f"{np.abs(along - even).max():.3g} mm off")
    return problems


def _duplicates(along: np.ndarray, names: list[str], headers: list[SliceHeader]) -> str | None:
    same = np.flatnonzero(np.diff(along) < SAME_POSITION_MM)
    if not len(same):
        return None
    shared = sorted({float(along[i]) for i in same})
    groups = [[names[j] for j in range(len(along)) if abs(along[j] - z) < SAME_POSITION_MM] for z in shared]
    details = []
    for field, label in (("echo_number", "echo numbers"), ("echo_time", "echo times"),
                         ("acquisition", "acquisition numbers")):
        values = sorted({h.tags[field].strip() for h in headers if h.tags.get(field, "").strip()})
        if len(values) > 1:
            details.append(f"{label} {values}")
    cause = f" ({', '.join(details)})" if details else ""
    places = [f"{z:.4g} mm ({', '.join(group)})" for z, group in zip(shared, groups)]
    return (f"{len(shared)} slice positions are each held by several files: several echoes or acquisitions "
            f"share one Series Instance UID{cause}; at {_list(places)}")


def _numbers(text: str | None, count: int) -> np.ndarray | None:
    if not text:
        return None
    try:
        values = np.array([float(v) for v in text.strip().split("\\")], dtype=np.float64)
    except ValueError:
        return None
    return values if values.shape == (count,) and np.isfinite(values).all() else None


def _list(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown if len(items) <= _SHOWN else f"{shown} and {len(items) - _SHOWN} more"
