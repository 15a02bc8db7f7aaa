"""Affine transforms and displacement fields in the files ANTs, ITK and SimpleITK read and write.

Conventions:

- gpuprep works in world coordinates RAS+ mm; an image affine (float64 ``[4, 4]``) maps voxel
  indices ``(i, j, k)`` (the spatial axes of a ``[C, D, H, W]`` tensor) to RAS mm.
- A registration result is a float64 ``[4, 4]`` matrix ``M`` (RAS mm) mapping a point of the
  **fixed** image's world to the corresponding point of the **moving** image's world (ITK's
  direction: what a resampler needs to pull the moving image onto the fixed grid).
- ITK, ANTs and SimpleITK keep physical points in LPS: with ``F = diag(-1, -1, 1, 1)``,
  ``M_lps = F @ M_ras @ F``.
- A displacement field ``u`` is ``[3, D, H, W]`` on the fixed image's grid (with that grid's
  affine), components in RAS mm along the world x, y, z axes: ``moving = fixed + u(fixed)``.

Files:

- ``.tfm`` / ``.txt``, ITK's text format: ``#Insight Transform File V1.0``, ``Transform:`` the type,
  ``Parameters:`` the 9 entries of ``A`` row by row then ``t``, ``FixedParameters:`` the centre
  ``c``, meaning ``y = A (x - c) + c + t``. ``AffineTransform`` and ``MatrixOffsetTransformBase``
  (``_double_3_3``, ``_float_3_3``) with any centre are read; ``AffineTransform_double_3_3``
  with centre 0 is written.
- ``.mat``, ITK's ``MatlabTransformIO`` file (ANTs' ``0GenericAffine.mat``), MATLAB v4: a 12 x 1
  vector named after the type, then ``fixed`` (3 x 1); each is a 20-byte header (int32 type, rows,
  cols, imagf, name length with its NUL), the name, the values. Type 0 (little-endian float64) is
  what SimpleITK and gpuprep write; 10 (float32, ANTs' ``_float_`` files), 1000 and 1010
  (big-endian) are read too.
- ``.nii`` / ``.nii.gz`` displacement fields in ITK's layout (ANTs' warps): shape
  ``(X, Y, Z, 1, 3)``, intent code 1007 (``NIFTI_INTENT_VECTOR``), vectors in **LPS** mm (x and y
  negated), the grid's affine as qform and sform (code 1, as SimpleITK writes; float32 in NIfTI-1).

Writes are atomic and replace a file only with ``overwrite=True`` (:mod:`gpuprep.io.outputs`). A
file over :data:`MAX_TRANSFORM_FILE_BYTES` or one that breaks its format raises
:class:`~gpuprep.errors.ImageReadError` naming the file, the rule and the bad value; bad arguments
to a writer raise :class:`~gpuprep.errors.TransformError`.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import torch

from ..errors import ConfigError, ImageReadError, TransformError, short_repr
from ..validation import check_bool
from . import gzip_fast
from .atomic import atomic_write_bytes
from .outputs import check_output_file
from .reader import read_image

__all__ = ["MAX_TRANSFORM_FILE_BYTES", "read_affine", "read_displacement_field", "write_affine",
           "write_displacement_field"]

#: The most bytes read from a ``.tfm``/``.txt``/``.mat`` transform file (an honest one holds < 1 KiB).
MAX_TRANSFORM_FILE_BYTES = 1 << 20

# F @ M @ F with F = diag(-1, -1, 1, 1) is this sign pattern: exact, and "+ 0.0" turns -0.0 into 0.0.
_LPS_SIGNS = np.outer([-1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, 1.0, 1.0])
_KINDS = {".tfm": "text", ".txt": "text", ".mat": "mat"}
_TEXT_MAGIC = "#Insight Transform File V1.0"
_AFFINE_TYPES = tuple(f"{base}_{precision}_3_3" for base in ("AffineTransform", "MatrixOffsetTransformBase")
                      for precision in ("double", "float"))
_WRITTEN_TYPE = "AffineTransform_double_3_3"
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# MATLAB v4 type field (byte order * 1000 + precision * 10) -> NumPy dtype of the values.
_MAT_TYPES = {("<", 0): "<f8", ("<", 10): "<f4", (">", 1000): ">f8", (">", 1010): ">f4"}
_MAT_HEADER, _MAX_MAT_NAME = 20, 64  # bytes of a variable's header, longest name read (ITK's are < 40)
_NIFTI_EXTENSIONS = (".nii", ".nii.gz")
_INTENT_VECTOR = 1007
#: Largest |cosine| between two voxel axes of a grid written as a displacement field (ITK has no shear).
_SHEAR_TOLERANCE = 1e-5


def write_affine(path: str | os.PathLike, matrix: Any, *, overwrite: bool = False) -> Path:
    """Write a fixed-to-moving RAS matrix as an ITK/ANTs affine transform file, atomically; return the path.

    Parameters
    ----------
    path:
        ``.tfm`` or ``.txt`` (ITK text) or ``.mat`` (MATLAB v4, float64, as ANTs and SimpleITK write).
    matrix:
        ``[4, 4]`` array or tensor mapping fixed-world RAS mm to moving-world RAS mm; finite,
        invertible, last row ``[0, 0, 0, 1]`` (to within 1e-9).
    overwrite:
        Replace an existing file; if False one raises :class:`~gpuprep.errors.OutputExistsError`.

    Example
    -------
    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "fixed_to_moving.tfm"
    >>> shift = np.eye(4); shift[:3, 3] = [1.0, 2.0, 3.0]
    >>> print(write_affine(out, shift).read_text(), end="")
    #Insight Transform File V1.0
    #Transform 0
    Transform: AffineTransform_double_3_3
    Parameters: 1.0 0.0 0.0 0.0 1.0 0.0 0.0 0.0 1.0 -1.0 -2.0 3.0
    FixedParameters: 0.0 0.0 0.0
    """
    path = Path(path)
    kind = _KINDS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"cannot write {path}: unknown transform extension; supported: .tfm, .txt, .mat")
    check_bool("write_affine", "overwrite", overwrite)
    ras = _as_matrix(matrix, path, "the matrix")
    check_output_file(path, overwrite=overwrite)
    lps = _LPS_SIGNS * ras + 0.0
    parameters = [float(x) for x in (*lps[:3, :3].ravel(), *lps[:3, 3])]
    if kind == "mat":
        data = _mat_vector(_WRITTEN_TYPE, parameters) + _mat_vector("fixed", [0.0, 0.0, 0.0])
    else:
        data = (f"{_TEXT_MAGIC}\n#Transform 0\nTransform: {_WRITTEN_TYPE}\n"
                f"Parameters: {' '.join(map(repr, parameters))}\nFixedParameters: 0.0 0.0 0.0\n").encode()
    return atomic_write_bytes(path, data)


def read_affine(path: str | os.PathLike) -> np.ndarray:
    """Read an ITK/ANTs affine transform file as a float64 ``[4, 4]`` fixed-to-moving RAS matrix.

    Parameters
    ----------
    path:
        ``.tfm``/``.txt`` (ITK text) or ``.mat`` (MATLAB v4) holding one affine transform (see
        the module docstring for the types read); at most :data:`MAX_TRANSFORM_FILE_BYTES`.

    Raises
    ------
    ImageReadError
        An unknown extension, a file too large, a header, type, variable or shape other than
        expected, a number that does not parse or is not finite, a singular matrix.

    Example
    -------
    >>> import pathlib, tempfile
    >>> out = write_affine(pathlib.Path(tempfile.mkdtemp()) / "a.mat", np.diag([2.0, 1.0, 1.0, 1.0]))
    >>> read_affine(out)[0]
    array([2., 0., 0., 0.])
    """
    path = Path(path)
    kind = _KINDS.get(path.suffix.lower())
    if kind is None:
        raise ImageReadError(f"{path}: unknown transform file type; supported: .tfm, .txt, .mat")
    with open(path, "rb") as stream:  # a missing file raises FileNotFoundError naming it
        data = stream.read(MAX_TRANSFORM_FILE_BYTES + 1)
    if len(data) > MAX_TRANSFORM_FILE_BYTES:
        raise ImageReadError(f"{path}: the file holds more than {MAX_TRANSFORM_FILE_BYTES} bytes (gpuprep.io."
                             "transform_files.MAX_TRANSFORM_FILE_BYTES); an affine transform file holds under 1 KiB")
    name, parameters, centre = _parse_mat(data, path) if kind == "mat" else _parse_text(data, path)
    if name not in _AFFINE_TYPES:
        raise ImageReadError(f"{path}: the transform type is {short_repr(name, 80)}; gpuprep reads "
                             f"{', '.join(_AFFINE_TYPES)}")
    if len(parameters) != 12 or len(centre) != 3:
        raise ImageReadError(f"{path}: {name} has 12 parameters (9 matrix entries row by row, 3 translations) and "
                             f"3 fixed parameters (the centre); the file holds {len(parameters)} and {len(centre)}")
    if not np.isfinite([*parameters, *centre]).all():
        raise ImageReadError(f"{path}: non-finite parameters (NaN or Inf): {short_repr([*parameters, *centre])}")
    lps = np.eye(4)
    lps[:3, :3] = linear = np.reshape(parameters[:9], (3, 3))
    lps[:3, 3] = np.add(parameters[9:], centre) - linear @ centre  # y = A (x - c) + c + t
    ras = _LPS_SIGNS * lps + 0.0
    problem = _matrix_problem(ras)
    if problem:
        raise ImageReadError(f"{path}: the transform's matrix {problem}")
    return ras


def write_displacement_field(path: str | os.PathLike, field: Any, affine: Any, *, overwrite: bool = False) -> Path:
    """Write a displacement field as an ITK/ANTs vector NIfTI (LPS vectors, 5D), atomically; return the path.

    Parameters
    ----------
    path:
        ``.nii`` or ``.nii.gz``.
    field:
        ``[3, D, H, W]`` array or tensor (any device): displacements in RAS mm on the fixed grid,
        ``moving_point = fixed_point + u``. float64 is kept, other floats are written as float32.
    affine:
        ``[4, 4]`` voxel-to-world (RAS mm) affine of the fixed grid; rotation, scaling and flips
        only (ITK images cannot hold a shear).
    overwrite:
        Replace an existing file; if False one raises :class:`~gpuprep.errors.OutputExistsError`.

    Example
    -------
    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "warp.nii.gz"
    >>> u = np.zeros((3, 4, 5, 6), dtype=np.float32); u[0] = 1.5
    >>> nib.load(write_displacement_field(out, u, np.eye(4))).shape
    (4, 5, 6, 1, 3)
    """
    path = Path(path)
    if not path.name.lower().endswith(_NIFTI_EXTENSIONS):
        raise ConfigError(f"cannot write {path}: a displacement field is written as .nii or .nii.gz")
    check_bool("write_displacement_field", "overwrite", overwrite)
    vectors = _as_field(field, path)
    grid = _as_matrix(affine, path, "the grid affine")
    axes = grid[:3, :3] / np.linalg.norm(grid[:3, :3], axis=0)
    cosine = np.abs(axes.T @ axes - np.eye(3)).max()
    if cosine > _SHEAR_TOLERANCE:
        raise TransformError(f"cannot write {path}: the grid affine has shear (voxel axes at cosine {cosine:.3g}, "
                             f"over {_SHEAR_TOLERANCE}); ITK images (ANTs, SimpleITK) cannot hold it:\n{grid}")
    check_output_file(path, overwrite=overwrite)
    lps = vectors.transpose(1, 2, 3, 0)[:, :, :, None, :] * np.array([-1.0, -1.0, 1.0], dtype=vectors.dtype)
    image = nib.Nifti1Image(lps, grid, dtype=lps.dtype)
    image.set_sform(grid, code=1)
    image.set_qform(grid, code=1)
    image.header.set_intent("vector")
    image.header.set_xyzt_units(xyz="mm")
    raw = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        raw = gzip_fast.compress(raw, 1)
    return atomic_write_bytes(path, raw)


def read_displacement_field(path: str | os.PathLike) -> tuple[torch.Tensor, np.ndarray]:
    """Read an ITK/ANTs displacement field NIfTI as RAS displacements on its grid.

    Parameters
    ----------
    path:
        ``.nii``/``.nii.gz`` of shape ``(X, Y, Z, 1, 3)``, intent code 1007, LPS vectors (as ANTs and
        SimpleITK write); the header is checked first, the voxels read by :func:`gpuprep.io.read_image`.

    Returns
    -------
    field, affine:
        float32 tensor ``[3, X, Y, Z]`` of displacements in RAS mm, and the grid's float64
        voxel-to-world RAS affine (the sform when its code is set, else the qform).

    Example
    -------
    >>> import pathlib, tempfile
    >>> u = np.zeros((3, 2, 2, 2)); u[0] = 1.5
    >>> out = write_displacement_field(pathlib.Path(tempfile.mkdtemp()) / "warp.nii", u, np.eye(4))
    >>> field, affine = read_displacement_field(out)
    >>> field[:, 0, 0, 0]
    tensor([1.5000, 0.0000, 0.0000])
    """
    path = Path(path)
    if not path.name.lower().endswith(_NIFTI_EXTENSIONS):
        raise ImageReadError(f"{path}: a displacement field is read from .nii or .nii.gz")
    if not path.is_file():
        raise FileNotFoundError(f"displacement field not found: {path}")
    try:
        header = cast(nib.Nifti1Header, nib.load(path).header)  # the header only: the voxels stay on disk
        shape = tuple(int(n) for n in header.get_data_shape())
        intent = int(header["intent_code"])
    except Exception as error:  # nibabel raises many types for a bad header
        raise ImageReadError(f"{path}: not a valid NIfTI file: {error}") from None
    if len(shape) != 5 or shape[3:] != (1, 3):
        raise ImageReadError(f"{path}: a displacement field has shape (X, Y, Z, 1, 3) (ITK's vector layout); "
                             f"the file has {shape}")
    if intent != _INTENT_VECTOR:
        raise ImageReadError(f"{path}: a displacement field has intent code {_INTENT_VECTOR} (NIFTI_INTENT_VECTOR); "
                             f"the file has {intent}")
    data, meta = read_image(path, nonfinite="keep")
    field = data.to(torch.float32)
    if not bool(torch.isfinite(field).all()):
        raise ImageReadError(f"{path}: {int((~torch.isfinite(field)).sum())} displacement values are not finite")
    field[:2].neg_()
    return field, meta["affine"].numpy().astype(np.float64)


def _matrix_problem(matrix: np.ndarray) -> str | None:
    """Why ``matrix`` is no usable affine (for a message), or None."""
    if matrix.shape != (4, 4):
        return f"must be 4x4, got shape {matrix.shape}"
    if not np.isfinite(matrix).all():
        return f"has non-finite entries (NaN or Inf):\n{matrix}"
    if np.abs(matrix[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-9:
        return f"has last row {matrix[3].tolist()}; an affine's is [0, 0, 0, 1]"
    if np.linalg.matrix_rank(matrix[:3, :3]) < 3:
        return f"is singular (not invertible):\n{matrix}"
    return None


def _parse_text(data: bytes, path: Path) -> tuple[str, list[float], list[float]]:
    """The transform type, parameters and fixed parameters of an ITK text transform file."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as error:
        raise ImageReadError(f"{path}: not an ITK text transform file: byte {error.start} is not ASCII") from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    first = lines[0][1] if lines else ""
    if first != _TEXT_MAGIC:
        raise ImageReadError(f"{path}: not an ITK text transform file: the first line is {short_repr(first, 80)}; "
                             f"expected {_TEXT_MAGIC!r}")
    fields: dict[str, str] = {}
    for number, line in lines[1:]:
        if line.startswith("#"):
            continue
        key, colon, value = line.partition(":")
        key = key.strip()
        if not colon or key not in ("Transform", "Parameters", "FixedParameters"):
            raise ImageReadError(f"{path}: line {number} is {short_repr(line, 80)}; expected 'Transform: ...', "
                                 "'Parameters: ...' or 'FixedParameters: ...'")
        if key in fields:
            raise ImageReadError(f"{path}: line {number} is a second {key!r}: the file holds several transforms; "
                                 "gpuprep reads files holding one affine transform")
        fields[key] = value.strip()
    missing = [key for key in ("Transform", "Parameters", "FixedParameters") if key not in fields]
    if missing:
        raise ImageReadError(f"{path}: the file has no {', '.join(repr(key + ':') for key in missing)} line")
    return fields["Transform"], _numbers(fields, "Parameters", path), _numbers(fields, "FixedParameters", path)


def _numbers(fields: dict[str, str], key: str, path: Path) -> list[float]:
    tokens = fields[key].split()
    bad = [token for token in tokens if not _NUMBER.fullmatch(token)]
    if bad:
        raise ImageReadError(f"{path}: {key} holds {short_repr(bad[0], 40)}, which is not a decimal number")
    return [float(token) for token in tokens]


def _mat_vector(name: str, values: list[float]) -> bytes:
    """One little-endian float64 column vector of a MATLAB v4 file, as ITK (vnl_matlab_write) writes it."""
    encoded = name.encode("ascii") + b"\0"
    return struct.pack("<5i", 0, len(values), 1, 0, len(encoded)) + encoded + struct.pack(f"<{len(values)}d", *values)


def _parse_mat(data: bytes, path: Path) -> tuple[str, list[float], list[float]]:
    """The transform type, parameters and fixed parameters of an ITK MATLAB v4 transform file."""
    name, parameters, offset = _mat_variable(data, 0, path, None, 12)
    _, centre, offset = _mat_variable(data, offset, path, "fixed", 3)
    if offset != len(data):
        raise ImageReadError(f"{path}: {len(data) - offset} bytes follow the 'fixed' vector; gpuprep reads files "
                             "holding one affine transform (two vectors)")
    return name, parameters, centre


def _mat_variable(data: bytes, offset: int, path: Path, expected: str | None, rows: int
                  ) -> tuple[str, list[float], int]:
    """Read the MATLAB v4 column vector at ``offset``: its name, values and the offset after it."""
    what = f"the variable at byte {offset}"
    if len(data) < offset + _MAT_HEADER:
        raise ImageReadError(f"{path}: truncated MATLAB v4 file: {what} needs a {_MAT_HEADER}-byte header, "
                             f"{len(data) - offset} bytes are left")
    order = "<" if struct.unpack_from("<i", data, offset)[0] in (0, 10) else ">"
    kind, count, cols, imaginary, name_length = struct.unpack_from(f"{order}5i", data, offset)
    if (order, kind) not in _MAT_TYPES:
        raise ImageReadError(f"{path}: {what} has MATLAB v4 type {kind}; ITK writes 0 or 10 (float64 or float32, "
                             "little-endian), 1000 or 1010 (big-endian)")
    if not 2 <= name_length <= _MAX_MAT_NAME or imaginary != 0:
        raise ImageReadError(f"{path}: {what} has name length {name_length} and imaginary flag {imaginary}; "
                             f"expected 2 to {_MAX_MAT_NAME} and 0")
    start = offset + _MAT_HEADER + name_length
    raw_name = data[offset + _MAT_HEADER : start]
    name = raw_name[:-1].decode("ascii", errors="replace")
    if raw_name[-1:] != b"\0" or not name.isprintable() or (expected is not None and name != expected):
        raise ImageReadError(f"{path}: {what} is named {short_repr(name, 80)}; expected "
                             f"{expected or 'a transform type'!r} (NUL-terminated)")
    if (count, cols) != (rows, 1):
        raise ImageReadError(f"{path}: variable {name!r} has shape {count} x {cols}; expected {rows} x 1")
    dtype = np.dtype(_MAT_TYPES[order, kind])
    end = start + rows * dtype.itemsize
    if len(data) < end:
        raise ImageReadError(f"{path}: truncated MATLAB v4 file: variable {name!r} needs {end - start} bytes of "
                             f"values, {max(len(data) - start, 0)} are left")
    return name, np.frombuffer(data, dtype, rows, start).astype(np.float64).tolist(), end


def _as_field(field: Any, path: Path) -> np.ndarray:
    """A native-endian float32/float64 NumPy copy-or-view ``[3, D, H, W]`` of ``field``, checked finite."""
    if isinstance(field, torch.Tensor):
        field = field.detach().cpu()
        array = (field.float() if field.dtype in (torch.float16, torch.bfloat16) else field).numpy()
    else:
        array = np.asarray(field)
    if array.ndim != 4 or array.shape[0] != 3 or 0 in array.shape:
        raise TransformError(f"cannot write {path}: a displacement field is [3, D, H, W] with no empty axis; got "
                             f"shape {tuple(array.shape)}")
    if array.dtype.kind != "f":
        raise TransformError(f"cannot write {path}: displacements must be floating point, got {array.dtype}")
    array = array.astype(np.float64 if array.dtype.itemsize >= 8 else np.float32, copy=False)  # native order
    if not np.isfinite(array).all():
        raise TransformError(f"cannot write {path}: {np.count_nonzero(~np.isfinite(array))} displacement values "
                             "are not finite (NaN or Inf)")
    return array


def _as_matrix(value: Any, path: Path, what: str) -> np.ndarray:
    """``value`` as a float64 NumPy affine, or TransformError naming ``path`` and the problem."""
    try:
        matrix = torch.as_tensor(value, dtype=torch.float64).detach().cpu().numpy().copy()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TransformError(f"cannot write {path}: {what} is not numeric ({error})") from None
    problem = _matrix_problem(matrix)
    if problem:
        raise TransformError(f"cannot write {path}: {what} {problem}")
    return matrix

