"""Records: the list of dicts (key -> file path, plus any other values) that a dataset reads.

A **record** names the files of one sample, e.g. ``{"image": "/data/sub-01_T1w.nii.gz",
"label": "/data/sub-01_dseg.nii.gz", "age": 34}``. A dataset turns each record into a sample with
:class:`~gpuprep.LoadImage` and friends. Records come from a plain list of dicts (checked by
:func:`as_records`), or are built from

- a CSV/TSV table, one row per sample (:func:`records_from_csv`);
- a folder and one glob pattern per key, files paired by the part the wildcards match
  (:func:`records_from_folder`);
- a BIDS-style tree, labels paired by the BIDS entities (:func:`records_from_bids`).

Files are never paired by their position in a listing: a file without its partner is an error
(or, with ``on_error="skip"``, dropped with a warning), so an image never meets a wrong label.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DatasetError
from ..io.reader import READ_EXTENSIONS

ON_ERROR = ("raise", "skip")
_NIFTI = (".nii.gz", ".nii")


def is_image_path(value: Any) -> bool:
    """Tell whether a record value names an image file: a path object or a string with an image extension.

    Example
    -------
    >>> is_image_path("sub-01_T1w.nii.gz"), is_image_path("34"), is_image_path(Path("x.mgz"))
    (True, False, True)
    """
    if isinstance(value, os.PathLike):
        return True
    return isinstance(value, str) and value.lower().endswith(READ_EXTENSIONS)


def check_on_error(on_error: str, owner: str) -> str:
    """Validate an ``on_error`` argument ("raise" or "skip")."""
    if on_error not in ON_ERROR:
        raise ConfigError(f"{owner}: on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error


def as_records(records: Sequence[Mapping] | str | os.PathLike, owner: str = "records") -> list[dict]:
    """Check and copy a list of records; a ``.csv``/``.tsv`` path is read with :func:`records_from_csv`.

    Every record must be a dict with string keys, and all records must have the same keys.

    Example
    -------
    >>> as_records([{"image": "a.nii.gz", "age": 30}, {"image": "b.nii.gz", "age": 41}])[1]["age"]
    41
    """
    if isinstance(records, (str, os.PathLike)):
        if str(records).lower().endswith((".csv", ".tsv")):
            return records_from_csv(records)
        raise ConfigError(
            f"{owner}: a path must be a .csv or .tsv table, got {str(records)!r}; for a folder use "
            "records_from_folder(root, patterns) or records_from_bids(root)"
        )
    if not isinstance(records, Sequence) or isinstance(records, (bytes, bytearray)):
        raise ConfigError(f"{owner}: must be a list of dicts or a CSV path, got {type(records).__name__}")
    if len(records) == 0:
        raise ConfigError(f"{owner}: must not be empty")
    out = []
    first_keys: list | None = None
    for index, record in enumerate(records):
        if not isinstance(record, Mapping) or not all(isinstance(k, str) for k in record):
            raise ConfigError(f"{owner}[{index}] must be a dict with string keys, got {record!r:.200}")
        if first_keys is None:
            first_keys = sorted(record)
        elif sorted(record) != first_keys:
            raise ConfigError(
                f"{owner}: all records must have the same keys; record 0 has {first_keys}, "
                f"record {index} has {sorted(record)}"
            )
        out.append(dict(record))
    return out


def records_from_csv(
    path: str | os.PathLike, columns: Sequence[str] | None = None, root: str | os.PathLike | None = None
) -> list[dict]:
    """Read records from a CSV (or ``.tsv``) table: a header row of keys, then one row per sample.

    Parameters
    ----------
    path:
        The table. ``.tsv`` files are tab-separated, anything else comma-separated.
    columns:
        The columns that hold file paths; None: every column whose non-empty values all end with
        an image extension (``.nii.gz``, ``.nii``, ``.mgz``, ...). Relative paths in these
        columns are resolved against ``root``; other columns are kept as strings.
    root:
        Folder that relative paths are relative to; default: the table's folder.

    Raises
    ------
    FileNotFoundError
        The table does not exist.
    DatasetError
        The table is empty, has no rows, repeats a column, misses a column of ``columns``, has a
        row with the wrong number of fields or an empty path cell (the line is named).

    Example
    -------
    >>> import tempfile
    >>> table = Path(tempfile.mkdtemp()) / "train.csv"
    >>> _ = table.write_text("image,age\\nsub-01_T1w.nii.gz,34\\n")
    >>> record = records_from_csv(table)[0]
    >>> record["image"] == str(table.parent / "sub-01_T1w.nii.gz"), record["age"]
    (True, '34')
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"records table not found: {path}")
    delimiter = "\t" if path.name.lower().endswith(".tsv") else ","
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream, delimiter=delimiter)
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise DatasetError(f"{path}: the table is empty (expected a header row of keys, then one row per sample)")
    header = [name.strip() for name in rows[0][1]]
    if "" in header or len(set(header)) != len(header):
        raise DatasetError(f"{path}: the header must name every column once, got {header}")
    if len(rows) == 1:
        raise DatasetError(f"{path}: the table has a header {header} but no rows")
    table = []
    for line, cells in rows[1:]:
        if len(cells) != len(header):
            raise DatasetError(f"{path}, line {line}: {len(cells)} fields, the header has {len(header)}")
        table.append((line, dict(zip(header, (cell.strip() for cell in cells)))))
    if columns is None:
        columns = [c for c in header if _all_image_paths(r[c] for _, r in table)]
    else:
        columns = [columns] if isinstance(columns, str) else list(columns)
        missing = [c for c in columns if c not in header]
        if missing:
            raise DatasetError(f"{path}: column(s) {missing} not in the table; its columns are {header}")
    base = Path(root) if root is not None else path.parent
    records = []
    for line, row in table:
        for column in columns:
            if not row[column]:
                raise DatasetError(f"{path}, line {line}: column {column!r} holds no path")
            row[column] = str(_resolve(row[column], base))
        records.append(row)
    return records


def _all_image_paths(values) -> bool:
    present = [v for v in values if v]
    return bool(present) and all(is_image_path(v) for v in present)


def _resolve(value: str, base: Path) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


def records_from_folder(
    root: str | os.PathLike, patterns: Mapping[str, str], on_error: str = "raise"
) -> list[dict]:
    """Glob one pattern per key under ``root`` and pair the files by their identifier.

    Matching rule: a pattern is matched against each file's path relative to ``root`` (``/``
    separated); ``*`` matches any characters within one folder or file name, ``?`` one such
    character and a ``**/`` segment any number of folders. The **identifier** of a file is the
    text its wildcards matched, joined by ``/``: ``"*_T1w.nii.gz"`` gives ``sub-01`` for
    ``sub-01_T1w.nii.gz``, and ``"*/anat/*_dseg.nii.gz"`` gives ``sub-01/sub-01`` for
    ``sub-01/anat/sub-01_dseg.nii.gz``. Files of different keys with the same identifier form one
    record ``{key: path, ..., "id": identifier}``; records are sorted by identifier. Hidden files
    (a name or folder starting with ``.``, e.g. macOS ``._`` copies) are ignored.

    Parameters
    ----------
    root:
        The folder to search.
    patterns:
        Key to pattern, e.g. ``{"image": "*_T1w.nii.gz", "label": "*_dseg.nii.gz"}``.
    on_error:
        ``"raise"``: an identifier found for some keys but not all raises, naming the unmatched
        files; ``"skip"``: those files are left out with a warning (it still raises when no
        complete record is left).

    Example
    -------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["sub-02_T1w.nii.gz", "sub-01_T1w.nii.gz", "sub-01_dseg.nii.gz", "sub-02_dseg.nii.gz"]:
    ...     _ = (root / name).write_bytes(b"")
    >>> records = records_from_folder(root, {"image": "*_T1w.nii.gz", "label": "*_dseg.nii.gz"})
    >>> [(r["id"], Path(r["label"]).name) for r in records]
    [('sub-01', 'sub-01_dseg.nii.gz'), ('sub-02', 'sub-02_dseg.nii.gz')]
    """
    check_on_error(on_error, "records_from_folder")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"records_from_folder: folder not found: {root}")
    if not isinstance(patterns, Mapping) or not patterns:
        raise ConfigError(f"records_from_folder: patterns must be a non-empty dict key -> pattern, got {patterns!r}")
    for key, pattern in patterns.items():
        if key == "id" or not isinstance(key, str) or not key:
            raise ConfigError(f"records_from_folder: keys must be non-empty strings other than 'id', got {key!r}")
        if not isinstance(pattern, str) or not any(c in pattern for c in "*?"):
            raise ConfigError(
                f"records_from_folder: patterns[{key!r}] must contain a wildcard (* or ?) that matches the "
                f"identifier, got {pattern!r}"
            )
    files = _visible_files(root)
    found: dict[str, dict[str, Path]] = {}
    for key, pattern in patterns.items():
        regex = _pattern_regex(pattern)
        found[key] = {}
        for relative, full in files:
            match = regex.fullmatch(relative)
            if match:
                found[key]["/".join(g.strip("/") for g in match.groups())] = full
        if not found[key]:
            raise DatasetError(f"records_from_folder: pattern {pattern!r} of key {key!r} matches no file in {root}")
    everywhere = set.intersection(*(set(f) for f in found.values()))
    unmatched = {k: sorted(str(p) for i, p in f.items() if i not in everywhere) for k, f in found.items()}
    unmatched = {k: v for k, v in unmatched.items() if v}
    if unmatched:
        message = (
            f"records_from_folder: files without a partner for every key (identifiers must match across "
            f"patterns {dict(patterns)}): {unmatched}"
        )
        if on_error == "raise" or not everywhere:
            raise DatasetError(message)
        warnings.warn(message + "; they are left out", stacklevel=2)
    return [{**{k: str(found[k][i]) for k in patterns}, "id": i} for i in sorted(everywhere)]


def _visible_files(root: Path) -> list[tuple[str, Path]]:
    out = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                full = Path(folder) / name
                out.append((full.relative_to(root).as_posix(), full))
    return out


def _pattern_regex(pattern: str) -> re.Pattern:
    parts = []
    for token in re.split(r"(\*\*/|\*|\?)", pattern.replace(os.sep, "/")):
        if token == "**/":
            parts.append(r"((?:[^/]+/)*)")
        elif token == "*":
            parts.append(r"([^/]*)")
        elif token == "?":
            parts.append(r"([^/])")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def parse_bids_name(name: str) -> tuple[dict[str, str], str]:
    """Split a BIDS file name into its entities and suffix (the image extension is dropped).

    Example
    -------
    >>> parse_bids_name("sub-01_ses-2_acq-fast_T1w.nii.gz")
    ({'sub': '01', 'ses': '2', 'acq': 'fast'}, 'T1w')
    """
    stem = name
    for extension in READ_EXTENSIONS:
        if stem.lower().endswith(extension):
            stem = stem[: -len(extension)]
            break
    *pairs, suffix = stem.split("_")
    entities = {}
    for pair in pairs:
        key, sep, value = pair.partition("-")
        if not sep or not key or not value:
            raise DatasetError(f"{name}: {pair!r} is not a BIDS entity 'key-value'")
        entities[key] = value
    return entities, suffix


def records_from_bids(
    root: str | os.PathLike,
    image: str = "T1w",
    label: str | None = "dseg",
    label_root: str | os.PathLike | None = None,
    on_error: str = "raise",
) -> list[dict]:
    """Records from a BIDS-style tree: ``sub-*/[ses-*/]anat/sub-*_[ses-*_][...]_<image>.nii[.gz]``.

    Each image gets the label file found under ``sub-*/[ses-*/]anat/`` of ``label_root`` (default
    ``root``; typically ``root/derivatives/<pipeline>``) whose suffix is ``label`` and whose
    entities include **all** of the image's entities with the same values (subject, session,
    acq, run, ...); a label may carry more entities (``space``, ``desc``...). ``image`` and
    ``label`` may also require entities, e.g. ``label="desc-aseg_dseg"``.

    Parameters
    ----------
    root:
        The dataset folder (holding ``sub-*`` folders).
    image, label:
        BIDS suffixes (optionally preceded by required entities) of images and labels; ``label``
        None gives records without labels.
    label_root:
        Where labels live, if not beside the images.
    on_error:
        ``"raise"``: an image with no label, or with more than one matching label, raises
        naming the files; ``"skip"``: it is left out with a warning (it still raises when no
        record is left).

    Returns
    -------
    A list of records ``{"image", ["label"], "subject", "session"}`` sorted by image path;
    ``session`` is present when any image has one (None for those without).

    Example
    -------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> anat = root / "sub-01" / "anat"; anat.mkdir(parents=True)
    >>> _ = (anat / "sub-01_T1w.nii.gz").write_bytes(b""); _ = (anat / "sub-01_dseg.nii.gz").write_bytes(b"")
    >>> [(r["subject"], Path(r["label"]).name) for r in records_from_bids(root)]
    [('01', 'sub-01_dseg.nii.gz')]
    """
    check_on_error(on_error, "records_from_bids")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"records_from_bids: folder not found: {root}")
    image_entities, image_suffix = _bids_selector(image, "image")
    images = _bids_files(root, image_suffix, image_entities)
    if not images:
        raise DatasetError(f"records_from_bids: no sub-*/[ses-*/]anat/*_{image}.nii[.gz] file under {root}")
    labels = []
    if label is not None:
        label_entities, label_suffix = _bids_selector(label, "label")
        labels = _bids_files(Path(label_root) if label_root is not None else root, label_suffix, label_entities)
    problems, records = [], []
    for path, entities in images:
        record: dict[str, Any] = {"image": str(path)}
        if label is not None:
            matches = [p for p, e in labels if all(e.get(k) == v for k, v in entities.items())]
            if len(matches) != 1:
                found = "no label" if not matches else f"{len(matches)} labels {[str(p) for p in matches]}"
                problems.append(f"{path}: {found} with suffix {label!r} and entities {entities}")
                continue
            record["label"] = str(matches[0])
        record["subject"] = entities["sub"]
        record["session"] = entities.get("ses")
        records.append(record)
    if problems:
        message = "records_from_bids: images without exactly one matching label:\n  " + "\n  ".join(problems)
        if on_error == "raise" or not records:
            raise DatasetError(message)
        warnings.warn(message + "\n(they are left out)", stacklevel=2)
    if all(r["session"] is None for r in records):
        for record in records:
            del record["session"]
    return records


def _bids_selector(text: str, argument: str) -> tuple[dict[str, str], str]:
    if not isinstance(text, str) or not text or text.startswith("_") or text.endswith("_"):
        raise ConfigError(f"records_from_bids: {argument} must be a BIDS suffix such as 'T1w', got {text!r}")
    try:
        return parse_bids_name(text)
    except DatasetError as error:
        raise ConfigError(f"records_from_bids: {argument}={text!r}: {error}") from None


def _bids_files(root: Path, suffix: str, required: Mapping[str, str]) -> list[tuple[Path, dict[str, str]]]:
    out = []
    for folder in sorted([*root.glob("sub-*/anat"), *root.glob("sub-*/ses-*/anat")]):
        for path in sorted(folder.iterdir()):
            name = path.name
            if name.startswith(".") or not name.startswith("sub-") or not name.lower().endswith(_NIFTI):
                continue
            try:
                entities, found_suffix = parse_bids_name(name)
            except DatasetError:
                continue
            if found_suffix == suffix and all(entities.get(k) == v for k, v in required.items()):
                out.append((path, entities))
    return sorted(out)
