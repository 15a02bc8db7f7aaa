"""Atomic file writes: a reader never sees a half-written file.

Data go to a temporary file in the target's folder, are flushed to disk, and the temporary
file is then renamed over the target (``os.replace`` is atomic on POSIX and Windows). If
anything fails, the temporary file is removed and an existing target is left untouched; an
``OSError`` that names no file (a full disk) is raised again as an ``ImageWriteError`` naming the
target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import ImageWriteError


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it to ``target``.

    Use this when a library insists on writing to a path itself (e.g. SimpleITK).

    Example
    -------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("hello")
    >>> out.read_text()
    'hello'
    """
    target = Path(target)
    if not target.parent.is_dir():
        raise ImageWriteError(f"cannot write {target}: folder {target.parent} does not exist")
    # Keep the target's suffixes so that libraries choosing the format by name still work.
    suffix = "".join(target.suffixes) if len("".join(target.suffixes)) < 16 else target.suffix
    try:
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    except OSError as error:  # it would name the temporary file; name the target instead
        named = ImageWriteError(f"cannot write {target}: {error.strerror or error}")
        named.errno = error.errno
        raise named from error
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, ImageWriteError) and error.filename is None:
            # e.g. a full disk: say which file could not be written.
            named = ImageWriteError(f"cannot write {target}: {error.strerror or error}")
            named.errno = error.errno
            raise named from error
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the target path."""
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target
