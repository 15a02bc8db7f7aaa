"""Limits that keep a crafted image file from costing more than an honest one.

An image header declares the shape and voxel type, and readers (nibabel, SimpleITK) allocate
what it declares. A crafted header can declare terabytes, negative sizes or sizes whose product
wraps a 64-bit integer. gpuprep checks every header with Python integers (which never wrap)
before anything is allocated, and compares the declared number of bytes with what the file can
hold:

- uncompressed voxels must fit in the bytes the file (or its detached data files) holds;
- deflate (gzip, zlib) cannot shrink data more than about 1032:1, so compressed voxels may not
  declare more than :data:`MAX_DEFLATE_RATIO` times the compressed bytes;
- no image may declare more than :data:`MAX_IMAGE_BYTES` (raise it for larger images:
  ``gpuprep.io.limits.MAX_IMAGE_BYTES = 64 << 30``).

Example
-------
>>> checked_shape("a.nii", (4, 5, 6), itemsize=2)
((4, 5, 6), 240)
>>> checked_shape("a.nii", (16384,) * 5, itemsize=2)
Traceback (most recent call last):
...
gpuprep.errors.ImageReadError: a.nii: the header declares shape (16384, 16384, 16384, 16384, 16384) \
of 2-byte voxels, 2361183241434822606848 bytes; gpuprep.io.limits.MAX_IMAGE_BYTES allows 34359738368
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from ..errors import ImageReadError

#: The most bytes of voxels one image may declare (32 GiB); a module setting the user may raise.
MAX_IMAGE_BYTES = 32 << 30
#: Deflate's largest possible compression ratio is about 1032:1 (258 bytes per 2-bit code); a
#: compressed stream that declares more output than this many times its size cannot be honest.
MAX_DEFLATE_RATIO = 1040
#: Bytes a compressed file may inflate to beyond what its header declares (MGH keeps tags after
#: the voxels); more is refused, and decompression stops there.
MAX_TRAILING_BYTES = 1 << 20
#: The most axes an image header may declare (NIfTI allows 7, ITK builds 2 to 6).
MAX_AXES = 16


def checked_shape(path: str | os.PathLike, dims: Sequence, itemsize: int) -> tuple[tuple[int, ...], int]:
    """Check the axis lengths a header declares; return them as Python ints and the voxel bytes.

    Parameters
    ----------
    path:
        The file, named in errors.
    dims:
        The declared axis lengths (any integers: NumPy int16/int64 values are converted exactly).
    itemsize:
        Bytes per voxel (times the components of a vector voxel).

    Raises
    ------
    ImageReadError
        For no axes or more than :data:`MAX_AXES`, a negative length, or a byte count above
        :data:`MAX_IMAGE_BYTES` (computed without overflow). A zero length is left to
        :func:`check_shape`, which names it.
    """
    shape = tuple(int(n) for n in dims)
    if not 1 <= len(shape) <= MAX_AXES:
        raise ImageReadError(f"{path}: the header declares {len(shape)} axes; expected 1 to {MAX_AXES}")
    if any(n < 0 for n in shape):
        raise ImageReadError(f"{path}: the header declares a negative axis length in shape {shape}")
    nbytes = math.prod(shape) * int(itemsize)
    if nbytes > MAX_IMAGE_BYTES:
        raise ImageReadError(
            f"{path}: the header declares shape {shape} of {itemsize}-byte voxels, {nbytes} bytes; "
            f"gpuprep.io.limits.MAX_IMAGE_BYTES allows {MAX_IMAGE_BYTES}"
        )
    return shape, nbytes


def check_declared_bytes(path: str | os.PathLike, declared: int, available: int, encoding: str) -> None:
    """Refuse a file whose header declares more voxel bytes than its data can hold.

    Parameters
    ----------
    path:
        The file, named in errors.
    declared:
        Bytes of voxels the header declares (from :func:`checked_shape`).
    available:
        Bytes of (possibly compressed) voxel data present: the file after its header, or the
        detached data files.
    encoding:
        ``"raw"`` (uncompressed), ``"text"`` (one or more characters per value), ``"hex"``
        (two characters per byte) or ``"deflate"`` (gzip or zlib).

    Example
    -------
    >>> check_declared_bytes("a.nrrd", 3375000000, 150, "raw")
    Traceback (most recent call last):
    ...
    gpuprep.errors.ImageReadError: a.nrrd: the header declares 3375000000 bytes of voxels, \
but the data holds only 150 bytes (raw encoding)
    """
    if encoding == "raw":
        possible = available
    elif encoding == "hex":
        possible = available // 2
    elif encoding == "text":
        possible = available * 8  # a value of up to 8 bytes written as one character
    elif encoding == "deflate":
        possible = available * MAX_DEFLATE_RATIO
    else:
        raise ValueError(f"check_declared_bytes: unknown encoding {encoding!r}")
    if declared > possible:
        raise ImageReadError(
            f"{path}: the header declares {declared} bytes of voxels, but the data holds only "
            f"{available} bytes ({encoding} encoding"
            + (f", which inflates at most {MAX_DEFLATE_RATIO}:1)" if encoding == "deflate" else ")")
        )


def check_shape(shape: tuple[int, ...], path: str | os.PathLike) -> None:
    """Refuse images with fewer than three axes or an axis of length zero.

    Parameters
    ----------
    shape:
        The image's axis lengths as read (after :func:`checked_shape`).
    path:
        The file, named in errors.

    Example
    -------
    >>> check_shape((4, 0, 6), "a.nii")
    Traceback (most recent call last):
    ...
    gpuprep.errors.ImageReadError: a.nii: zero-sized dimension in image shape (4, 0, 6); every axis must hold \
at least one voxel
    """
    if len(shape) < 3:
        raise ImageReadError(
            f"{path}: the image is {len(shape)}D (shape {shape}); gpuprep reads 3D volumes "
            "(a 3D file with a singleton axis is fine)"
        )
    if 0 in shape:
        raise ImageReadError(
            f"{path}: zero-sized dimension in image shape {shape}; every axis must hold at least one voxel"
        )
