"""What a dataset cache entry depends on: the identity of every file a record names.

:class:`~gpuprep.data.cache.CacheDataset` names a disk entry by a hash of the pipeline prefix and
of the record, where every value that names a file or a folder is replaced by the identity of
the files behind it:

- a value that is a path object, or a string naming an existing file or folder (so a DICOM
  folder given as ``str`` counts like a ``Path``), or a string with an image extension;
- a folder (a DICOM series): every file directly inside it;
- an NRRD/MetaImage header (``.nhdr``, ``.mhd``, ...): the detached data files it names too
  (:func:`gpuprep.io.detached.detached_data_files`).

Two ways to tell that a file is unchanged (``cache_key=``):

``"stat"`` (default)
    Absolute path, size, modification time, status-change time (``st_ctime_ns``) and inode.
    Cheap (one ``stat`` per file). A write that restores the mtime (``cp -p``, ``touch -d``,
    ``os.utime``) still changes the ctime, which no user call can set back, and a file replaced
    by a rename changes the inode, so both are caught. What it can miss: a same-size rewrite
    whose times fall in the same tick of the file system's clock as the state the entry was
    keyed on (two writes a few milliseconds apart on Linux), or a file system that does not
    keep ctime.
``"content"``
    Absolute path, size and the SHA-256 of the bytes: any byte change gives a new key. Each
    file is read once per process: the digest is remembered for the file's stat identity, so
    later epochs cost one ``stat`` (within one process the stat blind spot above remains;
    across processes the key is exact). SHA-256 was measured faster than BLAKE2b on CPUs with SHA
    instructions (1.5 vs 0.8 GB/s hashing a file in the page cache on the development machine),
    so reading the disk dominates.

Example
-------
>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "a.nii").write_bytes(b"1234")
>>> stat_key, content_key = file_identity(folder / "a.nii", "stat"), file_identity(folder / "a.nii", "content")
>>> stat_key[1], content_key[2][:12]
(4, '03ac674216f3')
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..io.detached import detached_data_files, is_header_format
from .records import is_image_path

#: The accepted values of ``cache_key``.
CACHE_KEY_MODES = ("stat", "content")

_CHUNK = 1 << 20


def names_a_file(value: Any) -> bool:
    """Tell whether a record value names a file or folder the entry depends on.

    A path object or a string with an image extension always does (a missing one is reported
    as bad data when the key is taken); any other string does when it names an existing file
    or folder.

    Example
    -------
    >>> names_a_file("scan.nii.gz"), names_a_file("34"), names_a_file(Path("/"))
    (True, False, True)
    """
    if is_image_path(value):
        return True
    return isinstance(value, str) and value != "" and os.path.exists(value)


def record_identity(record: Mapping, mode: str) -> dict:
    """The record with every value that names files replaced by the identity of those files.

    Parameters
    ----------
    record:
        A dataset record (key -> path or other value).
    mode:
        ``"stat"`` or ``"content"`` (see the module docstring).

    Example
    -------
    >>> record_identity({"age": 30}, "stat")
    {'age': 30}
    """
    return {name: path_identity(Path(value), mode) if names_a_file(value) else value
            for name, value in record.items()}


def path_identity(path: Path, mode: str) -> list:
    """The identity of a file with its detached data files, or of every file in a folder (or a ``.dcm``'s).

    Raises ``FileNotFoundError`` for a missing path (bad data, reported by the dataset) and
    :class:`~gpuprep.errors.ImageReadError` for a header naming a data file outside its folder.
    """
    # A DICOM folder, or a single .dcm file (it reads its whole series from its folder).
    if path.is_dir() or (path.name.lower().endswith(".dcm") and path.is_file()):
        folder = path if path.is_dir() else path.parent
        files = sorted(p for p in folder.iterdir() if p.is_file())
        return [os.path.abspath(path), [file_identity(p, mode) for p in files]]
    identity = file_identity(path, mode)
    if is_header_format(path):
        stat = path.stat()
        data_files = _detached(os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        return [identity, [file_identity(p, mode) for p in data_files]]
    return identity


def file_identity(path: Path, mode: str) -> list:
    """The identity of one file: absolute path and size, then its stat times (``"stat"``) or digest."""
    stat = path.stat()  # FileNotFoundError for a missing file
    absolute = os.path.abspath(path)
    if mode == "content":
        return [absolute, stat.st_size, _digest(absolute, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
                                                stat.st_ino)]
    return [absolute, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


@functools.lru_cache(maxsize=1 << 16)
def _digest(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    """SHA-256 of a file's bytes, remembered for its stat identity (read once per process)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1 << 16)
def _detached(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> tuple[Path, ...]:
    """The detached data files of a header, parsed once per stat identity of the header."""
    return tuple(detached_data_files(path))
