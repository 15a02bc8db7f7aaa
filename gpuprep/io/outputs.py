"""Checks that make writing outputs safe: nothing the user did not ask to replace is ever lost.

The rules every writer in gpuprep follows (``write_image``, ``SaveImage``, the command line):

- an output path that is a folder, or whose folder is a file, is refused before any work;
- an existing file is replaced only when the caller allows it (``overwrite``);
- a JSON file at a sidecar's (or report's) path that gpuprep did not write (it has neither a
  ``gpuprep_sidecar`` nor a ``gpuprep_version`` field, e.g. the BIDS sidecar ``sub-01_T1w.json``
  of an input) is **never** replaced;
- output folders are created only when needed, and the ones a failed run created are removed
  again when they are empty (:func:`make_folders`, :func:`remove_empty_folders`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import ImageWriteError, OutputExistsError


def written_by_gpuprep(path: str | os.PathLike) -> bool:
    """Return True when ``path`` is a JSON object that gpuprep wrote (``gpuprep_sidecar`` or ``gpuprep_version`` field).

    Example
    -------
    >>> import pathlib, tempfile
    >>> bids = pathlib.Path(tempfile.mkdtemp()) / "sub-01_T1w.json"
    >>> _ = bids.write_text('{"RepetitionTime": 2.3}')
    >>> written_by_gpuprep(bids)
    False
    """
    try:
        with open(path, "rb") as stream:
            content = json.loads(stream.read(16 * 1024 * 1024))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and bool({"gpuprep_sidecar", "gpuprep_version"} & set(content))


def check_output_folder(folder: str | os.PathLike, what: str = "output folder", probe: bool = False) -> None:
    """Raise :class:`~gpuprep.errors.ImageWriteError` unless ``folder`` is, or can become, a writable folder.

    Nothing is left behind. ``what`` names the argument in the message; ``probe`` as in :func:`folder_problem`.

    Example
    -------
    >>> import tempfile
    >>> check_output_folder(tempfile.mkdtemp())
    """
    problem = folder_problem(folder, probe)
    if problem:
        raise ImageWriteError(f"cannot write to {what} {folder}: {problem}")


def folder_problem(folder: str | os.PathLike, probe: bool = False) -> str | None:
    """Say why files cannot be written in ``folder`` (None when they can); nothing is left behind.

    ``folder``, or its nearest existing parent, must be a folder that this process may write to.
    With ``probe``, an empty file is created there and removed at once: a real test of what
    permissions alone cannot tell (root on a read-only export, ACLs), worth it before a long run.

    Example
    -------
    >>> import tempfile
    >>> folder_problem(tempfile.mkdtemp()) is None
    True
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    # os.access also reports read-only file systems (EROFS), even to root.
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable (permission denied or a read-only file system)"
    if probe:
        try:
            handle, name = tempfile.mkstemp(prefix=".gpuprep-write-test.", dir=existing)
        except OSError as error:
            return f"{existing} is not writable ({error.strerror or error})"
        os.close(handle)
        os.unlink(name)
    return None


def check_output_file(
    path: str | os.PathLike,
    *,
    overwrite: bool,
    sidecar: bool = False,
    fix: str = "pass overwrite=True",
    probe: bool = False,
) -> None:
    """Raise unless ``path`` may be written: not a folder, its folder usable, and replaceable if it exists.

    Parameters
    ----------
    path:
        The file about to be written.
    overwrite:
        Whether an existing file may be replaced (:class:`~gpuprep.errors.OutputExistsError` if not).
    sidecar:
        ``path`` is a JSON file (a sidecar or a report): an existing JSON that gpuprep did not
        write is refused even with ``overwrite=True``.
    fix:
        How the caller allows replacing, for the message (e.g. ``"pass --overwrite"``).
    probe:
        Test the folder by creating (and removing) a file, see :func:`folder_problem`.

    Example
    -------
    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.nii.gz"
    >>> check_output_file(out, overwrite=False)
    >>> _ = out.write_bytes(b"")
    >>> check_output_file(out, overwrite=False)
    Traceback (most recent call last):
    ...
    gpuprep.errors.OutputExistsError: cannot write .../x.nii.gz: the file exists; pass overwrite=True to replace it
    """
    path = Path(path)
    if path.is_dir():
        raise ImageWriteError(f"cannot write {path}: it is a folder; give a file name")
    problem = folder_problem(path.parent, probe)
    if problem:
        raise ImageWriteError(f"cannot write {path}: {problem}")
    if not (path.exists() or path.is_symlink()):
        return
    if sidecar and not written_by_gpuprep(path):
        raise OutputExistsError(
            f"cannot write {path}: a JSON file that gpuprep did not write is there (no 'gpuprep_sidecar' "
            "or 'gpuprep_version' field, e.g. the BIDS sidecar of an input) and is never replaced; "
            "choose another output folder or suffix, or write no sidecar"
        )
    if not overwrite:
        raise OutputExistsError(f"cannot write {path}: the file exists; {fix} to replace it")


def make_folders(folder: str | os.PathLike) -> list[Path]:
    """Create ``folder`` and its missing parents; return the folders created, deepest first.

    Example
    -------
    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> [p.relative_to(root).as_posix() for p in make_folders(root / "a" / "b")]
    ['a/b', 'a']
    """
    folder = Path(folder)
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
    return missing


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove those of ``folders`` (deepest first, from :func:`make_folders`) that are empty; keep the rest."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): leave it
            pass
