"""Fast gzip: ISA-L (``isal``) when installed, the standard library's ``zlib`` otherwise.

Decompressing ``.nii.gz`` is often the slowest step of loading (MONAI #8107); ISA-L's inflate
is about twice as fast as zlib's for the same output. Both backends go through the
``zlib``-style ``decompressobj`` interface, which also tells a truncated stream (no end
marker) from a corrupt one (bad deflate block or checksum).

Example
-------
>>> data = compress(b"voxels" * 100)
>>> decompress(data, source="example.nii.gz")[:6]
b'voxels'
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterator
from types import ModuleType

from ..errors import ConfigError, ImageReadError

_igzip: ModuleType | None
_isal_zlib: ModuleType | None
try:
    from isal import igzip as _igzip
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - depends on the environment
    _igzip = _isal_zlib = None

GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 31  # zlib's code for "gzip header and trailer"
_BACKENDS = ("isal", "zlib")

# A bounded stream (max_size) may have one member per this many inflated bytes, plus a few spare.
_BYTES_PER_MEMBER = 4096
_SPARE_MEMBERS = 16
_FIRST_PIECE = 4096  # bytes of input first given to each member after the first

#: The backend in use: "isal" when ISA-L is installed, else "zlib".
backend: str = "isal" if _isal_zlib is not None else "zlib"


def is_gzip(head: bytes | memoryview) -> bool:
    """Tell whether data starting with ``head`` is gzip-compressed (by its magic bytes)."""
    return head[:2] == GZIP_MAGIC


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Use backend ``name`` ("isal" or "zlib") inside a ``with`` block (benchmarks, tests).

    Example
    -------
    >>> with use_backend("zlib"):
    ...     decompress(compress(b"abc"))
    b'abc'
    """
    global backend
    if name not in _BACKENDS:
        raise ConfigError(f"gzip backend must be one of {_BACKENDS}, got {name!r}")
    if name == "isal" and _isal_zlib is None:
        raise ConfigError("gzip backend 'isal' needs the isal package: pip install \"gpuprep[io]\"")
    previous, backend = backend, name
    try:
        yield
    finally:
        backend = previous


def decompress(data: bytes, *, source: str = "<bytes>", max_size: int | None = None) -> bytes:
    """Decompress gzip ``data`` (one or more members), raising a clear error when it is damaged.

    Parameters
    ----------
    data:
        The whole compressed file.
    source:
        Name used in error messages (the file path).
    max_size:
        The most bytes the data may inflate to (all members together); decompression stops
        just past it, so a gzip bomb costs no more than this. None: no limit.

    Raises
    ------
    ImageReadError
        For a truncated stream, a corrupt deflate stream, a bad checksum, trailing garbage, or
        more than ``max_size`` inflated bytes.

    Example
    -------
    >>> decompress(compress(bytes(10_000)), source="bomb.nii.gz", max_size=100)
    Traceback (most recent call last):
    ...
    gpuprep.errors.ImageReadError: bomb.nii.gz: the gzip data inflates to more than 100 bytes, \
more than its header declares (a gzip bomb?); refusing it
    """
    module = _isal_zlib if backend == "isal" else zlib
    assert module is not None  # the backend is "isal" only when isal was imported
    errors: tuple[type[BaseException], ...] = (zlib.error, ValueError)
    if _isal_zlib is not None:
        errors = (*errors, _isal_zlib.error)
    max_members = None if max_size is None else _SPARE_MEMBERS + max_size // _BYTES_PER_MEMBER
    view = memoryview(data)
    parts: list[bytes] = []
    inflated = position = members = 0
    while True:
        members += 1
        if max_members is not None and members > max_members:
            raise ImageReadError(
                f"{source}: the gzip data has more than {max_members} members for at most {max_size} "
                "inflated bytes (writers use one member, or one per 64 KiB block); refusing it"
            )
        inflater = module.decompressobj(_GZIP_WBITS)
        # The first member gets all the input in one call (the fast path: files have one member).
        # Later members get pieces that double in size, because zlib copies the input left after a
        # member into unused_data: whole, that made many tiny members cost quadratic time.
        feed = len(data) if members == 1 else _FIRST_PIECE
        while True:
            piece = view[position : position + feed]
            # max_length one past the budget: getting that byte proves the stream is too long
            limit = 0 if max_size is None else max_size - inflated + 1  # 0: no limit
            try:
                parts.append(inflater.decompress(piece, limit))
            except errors as error:
                raise ImageReadError(
                    f"{source}: corrupt gzip data ({error}); the file is damaged, re-create or re-download it"
                ) from None
            inflated += len(parts[-1])
            if max_size is not None and inflated > max_size:
                raise ImageReadError(
                    f"{source}: the gzip data inflates to more than {max_size} bytes, more than its header "
                    "declares (a gzip bomb?); refusing it"
                )
            position += len(piece) - len(inflater.unused_data)  # below the limit, only unused_data is left
            if inflater.eof or position >= len(data):
                break
            feed *= 2
        if not inflater.eof:
            raise ImageReadError(
                f"{source}: truncated gzip data: the compressed stream of {len(data)} bytes ends "
                "before its end marker (incomplete download or copy?)"
            )
        if position >= len(data):
            break
        if not is_gzip(view[position : position + 2]):
            if not bytes(view[position:]).strip(b"\0"):  # gzip tools tolerate trailing zero padding
                break
            raise ImageReadError(
                f"{source}: corrupt gzip data: {len(data) - position} bytes of garbage after the compressed stream"
            )
    return parts[0] if len(parts) == 1 else b"".join(parts)


def decompress_head(data: bytes, size: int, *, source: str = "<bytes>") -> bytes:
    """The first ``size`` inflated bytes of gzip ``data`` (fewer if it is shorter), inflating no more.

    Reads a file's header before deciding how much of the rest to inflate. At most
    16 gzip members are looked at (a header split over more is crafted; what was found is
    returned, and fails to parse).

    Example
    -------
    >>> decompress_head(compress(b"header" + bytes(10**6)), 6)
    b'header'
    """
    view = memoryview(data)
    head = bytearray()
    position = 0
    for _ in range(_SPARE_MEMBERS):
        inflater = zlib.decompressobj(_GZIP_WBITS)
        feed = _FIRST_PIECE
        while not inflater.eof and position < len(data) and len(head) < size:
            piece = view[position : position + feed]
            try:
                head += inflater.decompress(piece, size - len(head))
            except zlib.error as error:
                raise ImageReadError(
                    f"{source}: corrupt gzip data ({error}); the file is damaged, re-create or re-download it"
                ) from None
            position += len(piece) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
            feed *= 2
        if len(head) >= size:
            break
        if not inflater.eof:
            raise ImageReadError(f"{source}: truncated gzip data: the stream ends inside the image header")
        if not is_gzip(view[position : position + 2]):
            break
    return bytes(head)


def compress(data: bytes, compresslevel: int = 1) -> bytes:
    """Gzip-compress ``data`` with a fixed header time, so equal inputs give equal files.

    Parameters
    ----------
    data:
        Bytes to compress.
    compresslevel:
        0 (fastest) to 9 (smallest). ISA-L has levels 0-3 only; higher levels map to 3.
    """
    if not isinstance(compresslevel, int) or isinstance(compresslevel, bool) or not 0 <= compresslevel <= 9:
        raise ConfigError(f"compresslevel must be an integer from 0 to 9, got {compresslevel!r}")
    if backend == "isal":
        assert _igzip is not None  # the backend is "isal" only when isal was imported
        return _igzip.compress(data, compresslevel=min(compresslevel, 3), mtime=0)
    return gzip.compress(data, compresslevel=compresslevel, mtime=0)
