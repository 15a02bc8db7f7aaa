"""Check an NRRD or MetaImage header before SimpleITK reads the file.

SimpleITK reads whatever data file a header names and allocates whatever size it declares, so a
171-byte NRRD declaring 1500³ voxels costs 3.4 GB, and ``data file: /etc/passwd`` is read as
voxels. :func:`check_itk_header` parses the header without reading voxels
(:func:`gpuprep.io.detached.read_header`, which refuses data files outside the header's folder),
then checks the declared shape and byte count against the bytes actually present
(:mod:`gpuprep.io.limits`).

Example
-------
>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> header = b"NRRD0004\\ntype: uint8\\ndimension: 3\\nsizes: 1500 1500 1500\\nencoding: raw\\n\\n"
>>> _ = (folder / "big.nrrd").write_bytes(header + bytes(8))
>>> check_itk_header(folder / "big.nrrd")
Traceback (most recent call last):
...
gpuprep.errors.ImageReadError: .../big.nrrd: the header declares 3375000000 bytes of voxels, \
but the data holds only 8 bytes (raw encoding)
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ImageReadError
from .detached import Header, read_header
from .limits import check_declared_bytes, checked_shape

# NRRD's type names (teem's format specification) by bytes per value.
_NRRD_TYPE_NAMES = {
    1: "signed char, int8, int8_t, uchar, unsigned char, uint8, uint8_t",
    2: "short, short int, signed short, signed short int, int16, int16_t, "
    "ushort, unsigned short, unsigned short int, uint16, uint16_t",
    4: "int, signed int, int32, int32_t, uint, unsigned int, uint32, uint32_t, float",
    8: "longlong, long long, long long int, signed long long, signed long long int, int64, int64_t, "
    "ulonglong, unsigned long long, unsigned long long int, uint64, uint64_t, double",
}
_NRRD_TYPE_SIZES = {name.strip(): size for size, names in _NRRD_TYPE_NAMES.items() for name in names.split(",")}
# NRRD encodings -> how many voxel bytes a data byte can hold (see gpuprep.io.limits.check_declared_bytes).
_NRRD_ENCODINGS = {
    "raw": "raw",
    "txt": "text",
    "text": "text",
    "ascii": "text",
    "hex": "hex",
    "gz": "deflate",
    "gzip": "deflate",
}  # not bzip2: SimpleITK's NrrdIO cannot decode it, yet allocates the declared size before saying so
# MetaIO's MET_ValueTypeSize (MET_LONG is 4 bytes in MetaIO; ITK writes int64 as MET_LONG_LONG).
_META_TYPE_SIZES = {
    **dict.fromkeys(("MET_ASCII_CHAR", "MET_CHAR", "MET_UCHAR"), 1),
    **dict.fromkeys(("MET_SHORT", "MET_USHORT"), 2),
    **dict.fromkeys(("MET_INT", "MET_UINT", "MET_LONG", "MET_ULONG", "MET_FLOAT"), 4),
    **dict.fromkeys(("MET_LONG_LONG", "MET_ULONG_LONG", "MET_DOUBLE"), 8),
}


def check_itk_header(path: str | os.PathLike) -> Header:
    """Check an NRRD/MetaImage header's data files, shape and declared size; return the header.

    Parameters
    ----------
    path:
        An ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file.

    Raises
    ------
    ImageReadError
        Naming the file, the field and the bad value: a data file outside the header's folder
        or missing, a missing or malformed size/type field, a shape that is negative or too
        large (:data:`gpuprep.io.limits.MAX_IMAGE_BYTES`), or more declared voxel bytes than
        the data can hold.
    """
    path = Path(path)
    header = read_header(path)
    if header.format == "nrrd":
        shape_field, type_field, encoding_field = "sizes", "type", "encoding"
        itemsize = _field_size(path, header, type_field, _NRRD_TYPE_SIZES)
        encoding_name = header.fields.get(encoding_field, "").lower()
        if encoding_name not in _NRRD_ENCODINGS:
            raise ImageReadError(
                f"{path}: unsupported NRRD encoding {encoding_name[:40]!r}; expected one of {sorted(_NRRD_ENCODINGS)}"
            )
        encoding = _NRRD_ENCODINGS[encoding_name]
        axes_field = "dimension"
    else:
        shape_field, type_field, axes_field = "dimsize", "elementtype", "ndims"
        channels = _integer(path, header, "elementnumberofchannels", default="1")
        if channels < 1:
            raise ImageReadError(f"{path}: the header field ElementNumberOfChannels = {channels} is below 1")
        itemsize = _field_size(path, header, type_field, _META_TYPE_SIZES) * channels
        if header.fields.get("binarydata", "true").lower() == "false":
            encoding = "text"
        elif header.fields.get("compresseddata", "false").lower() == "true":
            encoding = "deflate"
        else:
            encoding = "raw"
    dims = _integers(path, header, shape_field)
    axes = _integer(path, header, axes_field, default=str(len(dims)))
    if axes != len(dims):
        raise ImageReadError(
            f"{path}: the header's {axes_field} is {axes} but {shape_field} lists {len(dims)} lengths {dims}"
        )
    _, declared = checked_shape(path, dims, itemsize)
    check_declared_bytes(path, declared, _available_bytes(path, header), encoding)
    return header


def _available_bytes(path: Path, header: Header) -> int:
    """Bytes of voxel data present: after the header, or in the detached files together."""
    if not header.data_files:
        return max(path.stat().st_size - header.header_bytes, 0)
    total = 0
    for file in header.data_files:
        if not file.is_file():
            raise ImageReadError(f"{path}: the detached data file {file} named by the header does not exist")
        total += file.stat().st_size
    return total


def _field_size(path: Path, header: Header, name: str, sizes: dict[str, int]) -> int:
    value = header.fields.get(name)
    if value is None:
        raise ImageReadError(f"{path}: the header has no {name!r} field")
    key = value if header.format == "metaimage" else value.lower()
    size = sizes.get(key.removesuffix("_ARRAY"))
    if size is None:
        raise ImageReadError(f"{path}: unsupported voxel type {name} = {value[:40]!r}")
    return size


def _integers(path: Path, header: Header, name: str) -> list[int]:
    value = header.fields.get(name)
    if value is None:
        raise ImageReadError(f"{path}: the header has no {name!r} field")
    try:
        return [int(part) for part in value.split()]
    except ValueError:
        raise ImageReadError(f"{path}: the header field {name} = {value[:80]!r} is not a list of integers") from None


def _integer(path: Path, header: Header, name: str, default: str) -> int:
    value = header.fields.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise ImageReadError(f"{path}: the header field {name} = {value[:80]!r} is not an integer") from None
