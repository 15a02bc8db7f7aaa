"""The inputs of a dataset run: image files, a folder, a CSV/TSV table or a BIDS root, as records.

:func:`resolve_inputs` turns what the user named into records with the record builders of
:mod:`gpuprep.data.records` (the same ones the Python API uses) and picks the folder that the
outputs mirror:

- image files: one record ``{"image": path}`` each; outputs mirror their paths relative to the
  files' common folder;
- a folder: every image under it, recursively (hidden files and single DICOM slices left out), or
  those matching ``pattern`` (:func:`~gpuprep.data.records.records_from_folder`'s rules; a pattern
  without ``/`` matches at any depth); outputs mirror the paths relative to the folder;
- a BIDS root (a folder with ``dataset_description.json`` or ``sub-*/[ses-*/]anat`` folders, and no
  ``pattern``): :func:`~gpuprep.data.records.records_from_bids`; outputs mirror the tree;
- a ``.csv``/``.tsv`` table: :func:`~gpuprep.data.records.records_from_csv`; outputs mirror the paths
  relative to the table's folder, or to the images' common folder when some lie outside it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DatasetError
from ..io.reader import READ_EXTENSIONS
from .records import is_image_path, records_from_bids, records_from_csv, records_from_folder

#: Endings left out of a folder scan: a DICOM series is a folder of slices, given as its own input.
SCAN_SKIPPED = (".dcm",)
_TABLES = (".csv", ".tsv")


@dataclass(frozen=True)
class RunInputs:
    """What a run reads: its records, the folder their outputs mirror, and the key that names the outputs.

    Attributes
    ----------
    records:
        One dict per input (key -> path or value), all with the same keys.
    root:
        The folder whose tree the outputs mirror (absolute).
    primary:
        The record key whose file names each record's outputs (``"image"`` when there is one).
    kind:
        ``"files"``, ``"folder"``, ``"bids"`` or ``"csv"``.
    """

    records: list[dict]
    root: Path
    primary: str
    kind: str

    def relative(self, record: dict) -> str:
        """The primary file of ``record``, relative to :attr:`root` (``/``-separated)."""
        return Path(os.path.relpath(os.path.abspath(record[self.primary]), self.root)).as_posix()


def resolve_inputs(inputs: Sequence[str | os.PathLike], pattern: str | None = None, bids_image: str = "T1w",
                   bids_label: str | None = None) -> RunInputs:
    """Read the records of image files, one folder, one BIDS root or one CSV/TSV table (see the module docstring).

    Parameters
    ----------
    inputs:
        Image files, or a single folder, BIDS root or table.
    pattern:
        For a folder: the files to take, e.g. ``"*_T1w.nii.gz"`` (default: every image).
    bids_image, bids_label:
        For a BIDS root: the images' suffix and the labels' (None: no labels).

    Example
    -------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["a/x.nii.gz", "b/x.nii.gz", "b/notes.txt"]:
    ...     (root / name).parent.mkdir(exist_ok=True); _ = (root / name).write_bytes(b"")
    >>> found = resolve_inputs([root])
    >>> found.kind, [found.relative(r) for r in found.records]
    ('folder', ['a/x.nii.gz', 'b/x.nii.gz'])
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ConfigError("INPUT: give image files, or one folder, BIDS root or .csv/.tsv table")
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"INPUT {path}: no such file or folder")
    single = paths[0] if len(paths) == 1 else None
    if pattern is not None and (single is None or not single.is_dir()):
        raise ConfigError(f"--pattern {pattern!r}: a pattern selects files in one folder INPUT, got {len(paths)} "
                          f"input(s) starting with {paths[0]}")
    if single is not None and single.is_dir():
        if pattern is None and _is_bids(single):
            return _bids(single, bids_image, bids_label)
        return _folder(single, pattern)
    if single is not None and single.name.lower().endswith(_TABLES):
        return _table(single)
    return _files(paths)


def _is_bids(root: Path) -> bool:
    return (root / "dataset_description.json").is_file() or any(
        p.is_dir() for p in [*root.glob("sub-*/anat"), *root.glob("sub-*/ses-*/anat")])


def _bids(root: Path, image: str, label: str | None) -> RunInputs:
    records = records_from_bids(root, image=image, label=label)
    return RunInputs(records, Path(os.path.abspath(root)), "image", "bids")


def _folder(root: Path, pattern: str | None) -> RunInputs:
    if pattern is not None and (not isinstance(pattern, str) or not any(c in pattern for c in "*?")):
        raise ConfigError(f"--pattern must contain a wildcard (* or ?), e.g. '*_T1w.nii.gz', got {pattern!r}")
    glob = "**/*" if pattern is None else pattern if "/" in pattern else f"**/{pattern}"
    try:
        found = records_from_folder(root, {"image": glob})
    except DatasetError:
        found = []
    records = [{"image": r["image"]} for r in found
               if is_image_path(r["image"]) and not r["image"].lower().endswith(SCAN_SKIPPED)]
    if not records:
        wanted = (f"matching --pattern {pattern!r}" if pattern
                  else f"with an image extension ({', '.join(READ_EXTENSIONS)})")
        raise DatasetError(f"INPUT {root}: no file {wanted} in the folder or its subfolders")
    return RunInputs(records, Path(os.path.abspath(root)), "image", "folder")


def _table(table: Path) -> RunInputs:
    records = records_from_csv(table)
    keys = [k for k in records[0] if is_image_path(records[0][k])]
    if not keys:
        raise DatasetError(f"INPUT {table}: no column holds image paths (columns: {list(records[0])}); "
                           f"a path column's values must end with an image extension")
    primary = "image" if "image" in keys else keys[0]
    root = Path(os.path.abspath(table.parent))
    files = [os.path.abspath(r[primary]) for r in records]
    if any(Path(os.path.relpath(f, root)).parts[:1] == ("..",) for f in files):
        root = Path(os.path.commonpath([os.path.dirname(f) for f in files]))
    return RunInputs(records, root, primary, "csv")


def _files(paths: list[Path]) -> RunInputs:
    for path in paths:
        if path.is_dir():
            raise ConfigError(f"INPUT {path} is a folder among {len(paths)} inputs; give image files, or one folder, "
                              "BIDS root or table on its own")
        if not is_image_path(str(path)) or path.name.lower().endswith(_TABLES):
            what = "a table (.csv/.tsv) among several inputs" if path.name.lower().endswith(_TABLES) else (
                f"not an image file (extensions: {', '.join(READ_EXTENSIONS)})")
            raise ConfigError(f"INPUT {path}: {what}; give image files, or one folder, BIDS root or table")
    seen: dict[str, Path] = {}
    for path in paths:
        key = os.path.realpath(path)
        if key in seen:
            raise ConfigError(f"INPUT {path}: the same file as {seen[key]}; give each input once")
        seen[key] = path
    root = Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))
    return RunInputs([{"image": str(p)} for p in paths], root, "image", "files")
