"""Header-only parsing of NRRD and MetaImage files: their fields and the data files they name.

An NRRD header (``.nhdr``, or ``.nrrd`` with ``data file:``) and a MetaImage header (``.mhd``, or
``.mha`` with ``ElementDataFile`` other than ``LOCAL``) may keep their voxels in *detached*
files. A crafted header can name any file (``data file: /etc/passwd``), and SimpleITK would
read it as voxels. So before SimpleITK sees a header, gpuprep parses it here, without reading
any voxels, and refuses a data file that is absolute, contains ``..`` or resolves (through
symbolic links) outside the header's own folder.

The same list of data files tells the cache which files an entry depends on.

Example
-------
>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> text = "NDims = 3\\nDimSize = 2 2 2\\nElementType = MET_UCHAR\\nElementDataFile = a.raw\\n"
>>> _ = (folder / "a.mhd").write_text(text)
>>> [p.name for p in detached_data_files(folder / "a.mhd")]
['a.raw']
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import ImageReadError

#: The most bytes of a header that are read; a longer header is refused.
MAX_HEADER_BYTES = 1 << 20
#: The most data files one header may name.
MAX_DATA_FILES = 100_000

_NRRD_EXTENSIONS = (".nrrd", ".nhdr")
_META_EXTENSIONS = (".mha", ".mhd")


@dataclass
class Header:
    """The fields of an NRRD or MetaImage header and the data files it names.

    ``fields`` maps lower-cased field names to their raw text values; ``data_files`` are the
    detached files, resolved and checked to lie in the header's folder (empty when the voxels
    follow the header in the same file); ``header_bytes`` is where attached voxels start.
    """

    format: str
    fields: dict[str, str]
    data_files: list[Path] = field(default_factory=list)
    header_bytes: int = 0


def is_header_format(path: str | os.PathLike) -> bool:
    """Tell whether ``path`` names an NRRD or MetaImage file (by its extension)."""
    return str(path).lower().endswith(_NRRD_EXTENSIONS + _META_EXTENSIONS)


def detached_data_files(path: str | os.PathLike) -> list[Path]:
    """The detached data files an NRRD or MetaImage header names (checked); [] for other files.

    Raises
    ------
    ImageReadError
        For a data file that is absolute, has a ``..`` component, or lies outside the header's
        folder, and for a header that cannot be parsed.
    """
    path = Path(path)
    if not is_header_format(path) or not path.is_file():
        return []
    return read_header(path).data_files


def read_header(path: str | os.PathLike) -> Header:
    """Parse the header of an NRRD (``.nrrd``, ``.nhdr``) or MetaImage (``.mha``, ``.mhd``) file.

    Only the first :data:`MAX_HEADER_BYTES` are read; no voxel data is touched.
    """
    path = Path(path)
    with open(path, "rb") as stream:
        head = stream.read(MAX_HEADER_BYTES + 1)
    if path.name.lower().endswith(_NRRD_EXTENSIONS):
        return _parse_nrrd(path, head)
    return _parse_metaimage(path, head)


def _lines(path: Path, head: bytes):
    """Yield each header line (decoded, without its line end) and the byte offset just after it."""
    position = 0
    while position < len(head):
        end = head.find(b"\n", position)
        if end < 0:
            if len(head) > MAX_HEADER_BYTES:
                raise ImageReadError(f"{path}: the header is longer than {MAX_HEADER_BYTES} bytes; refusing it")
            end = len(head)
        text = head[position:end].decode("latin-1").rstrip("\r")
        position = end + 1
        yield text, min(position, len(head))


def _parse_nrrd(path: Path, head: bytes) -> Header:
    if not head.startswith(b"NRRD"):
        raise ImageReadError(f"{path}: not an NRRD file: it does not start with the magic 'NRRD000X'")
    fields: dict[str, str] = {}
    listed: list[str] | None = None
    offset = len(head)
    lines = _lines(path, head)
    next(lines)  # the magic line
    for number, (line, position) in enumerate(lines, start=2):
        if not line.strip() and listed is None:  # a blank line ends the header; attached voxels follow
            offset = position
            break
        if listed is not None:  # after "data file: LIST" every line names one file
            listed.append(line.strip())
            continue
        if line.startswith("#"):
            continue
        if ":=" in line:  # key/value pairs carry no structure
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ImageReadError(f"{path}: line {number} of the NRRD header is not 'field: value': {line[:80]!r}")
        name, value = name.strip().lower(), value.strip()
        if name == "datafile":
            name = "data file"
        fields[name] = value
        if name == "data file" and value.split()[:1] == ["LIST"]:
            listed = []
    names = _data_file_names(path, fields.get("data file"), listed)
    return Header("nrrd", fields, _checked(path, names), 0 if names else offset)


def _parse_metaimage(path: Path, head: bytes) -> Header:
    fields: dict[str, str] = {}
    listed: list[str] | None = None
    offset = 0
    for line_number, (text, position) in enumerate(_lines(path, head), start=1):
        if listed is not None:
            if text.strip():
                listed.append(text.strip())
            continue
        if not text.strip():
            continue
        name, sep, value = text.partition("=")
        if not sep:
            raise ImageReadError(
                f"{path}: line {line_number} of the MetaImage header is not 'Key = Value': {text[:80]!r}"
            )
        name, value = name.strip().lower(), value.strip()
        fields[name] = value
        if name == "elementdatafile":  # always the last field: the voxels (or the file list) follow
            offset = position
            if value.split()[:1] == ["LIST"]:
                listed = []
                continue
            break
    if "elementdatafile" not in fields:
        raise ImageReadError(f"{path}: the MetaImage header has no ElementDataFile field")
    value = fields["elementdatafile"]
    names = [] if value == "LOCAL" else _data_file_names(path, value, listed)
    return Header("metaimage", fields, _checked(path, names), 0 if names else offset)


def _data_file_names(path: Path, value: str | None, listed: list[str] | None) -> list[str]:
    """The file names a 'data file' / 'ElementDataFile' value stands for (a name, a LIST or a pattern)."""
    if value is None:
        return []
    if listed is not None:
        return [name for name in listed if name]
    parts = value.split()
    if len(parts) >= 4 and "%" in parts[0]:  # "img%03d.raw min max step [subdim]"
        try:
            first, last, step = (int(p) for p in parts[1:4])
        except ValueError:
            raise ImageReadError(f"{path}: the data file pattern {value[:80]!r} has non-integer bounds") from None
        if step == 0 or (last - first) // step + 1 > MAX_DATA_FILES:
            raise ImageReadError(f"{path}: the data file pattern {value[:80]!r} names too many files")
        try:
            return [parts[0] % number for number in range(first, last + (1 if step > 0 else -1), step)]
        except (TypeError, ValueError):
            raise ImageReadError(f"{path}: the data file pattern {parts[0][:80]!r} is not a valid format") from None
    return [value]


def _checked(path: Path, names: list[str]) -> list[Path]:
    """Resolve data file names against the header's folder; refuse any that leave it."""
    if len(names) > MAX_DATA_FILES:
        raise ImageReadError(f"{path}: the header names {len(names)} data files (at most {MAX_DATA_FILES})")
    folder = path.parent.resolve()
    files = []
    for name in names:
        if os.path.isabs(name) or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute():
            raise ImageReadError(
                f"{path}: refusing the detached data file {name[:200]!r}: it is an absolute path; "
                "a header may only name files in its own folder"
            )
        if ".." in PurePosixPath(name.replace("\\", "/")).parts:
            raise ImageReadError(
                f"{path}: refusing the detached data file {name[:200]!r}: it contains '..'; "
                "a header may only name files in its own folder"
            )
        resolved = (folder / name).resolve()
        if not resolved.is_relative_to(folder):
            raise ImageReadError(
                f"{path}: refusing the detached data file {name[:200]!r}: it resolves to {resolved}, "
                f"outside the header's folder {folder}"
            )
        files.append(resolved)
    return files
