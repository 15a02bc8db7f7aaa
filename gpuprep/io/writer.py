"""Write tensors ``[C, D, H, W]`` as NIfTI, MGH or (through SimpleITK) NRRD/MetaImage files.

Every write is atomic (:mod:`gpuprep.io.atomic`): the file appears complete or not at all, and
an existing file is replaced only once the new one is fully on disk. Compressed formats are
serialised in memory (``img.to_bytes()``) and gzipped with ISA-L when installed.

NIfTI geometry: the affine goes into the **sform** (code 2, "aligned", unless given), which
readers such as nibabel, FSL and ANTs use first, and a rigid approximation into the **qform**
(code 1, "scanner", unless given) for readers that only know the qform. NIfTI-1 stores the sform
as float32; pass ``nifti_version=2`` to keep a float64 affine exactly. Spatial units are mm.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, SupportsInt, cast

import nibabel as nib
import numpy as np
import torch

from ..errors import ConfigError, TransformError
from ..validation import check_bool
from . import gzip_fast
from .atomic import atomic_path, atomic_write_bytes
from .outputs import check_output_file
from .sidecar import dumps, make_sidecar, sidecar_path

#: Output extensions and the format each one writes.
WRITE_FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".mgz": "mgh",
    ".mgh": "mgh",
    ".nrrd": "nrrd",
    ".mha": "mha",
}
DEFAULT_SFORM_CODE = 2  # "aligned"
DEFAULT_QFORM_CODE = 1  # "scanner"
_MGH_DTYPES = {np.dtype(t) for t in (np.uint8, np.int16, np.int32, np.float32)}


def write_format(path: str | os.PathLike) -> str:
    """Return the format written for ``path`` by its extension, or raise naming the supported ones.

    Example
    -------
    >>> write_format("out/brain.nii.gz")
    'nifti'
    """
    name = Path(path).name.lower()
    for extension, fmt in WRITE_FORMATS.items():
        if name.endswith(extension):
            return fmt
    raise ConfigError(
        f"cannot write {path}: unknown output extension; supported: {', '.join(WRITE_FORMATS)}"
    )


def write_image(
    path: str | os.PathLike,
    data: torch.Tensor | np.ndarray,
    affine: Any,
    *,
    history: list | None = None,
    sidecar: bool = True,
    nifti_version: int = 1,
    qform_code: int | str | None = None,
    sform_code: int | str | None = None,
    compresslevel: int = 1,
    extra_sidecar: dict | None = None,
    source: str | os.PathLike | None = None,
    save_step: dict | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``data`` ``[C, D, H, W]`` with its voxel-to-world ``affine`` to ``path`` atomically.

    Parameters
    ----------
    path:
        Output file; the extension picks the format (``.nii.gz``, ``.nii``, ``.mgz``, ``.mgh``,
        and with SimpleITK ``.nrrd``, ``.mha``). Its folder must exist.
    data:
        Tensor (any device) or array ``[C, D, H, W]``; several channels are written as a 4D
        image with channels last (NIfTI/MGH) or as vector components (NRRD/MHA). The dtype is
        kept (bool -> uint8, float16/bfloat16 -> float32); MGH, which knows only uint8, int16,
        int32 and float32, gets other integers widened or narrowed when their values fit.
    affine:
        ``[4, 4]`` voxel-to-world matrix, RAS+ mm.
    history:
        The sample's history records, stored in the sidecar.
    sidecar:
        Also write the JSON sidecar (:mod:`gpuprep.io.sidecar`) beside the image.
    nifti_version:
        1 or 2 (NIfTI-2: 64-bit dimensions and a float64 sform).
    qform_code, sform_code:
        NIfTI xform codes (0-5 or names such as ``"scanner"``, ``"aligned"``, ``"mni"``);
        default 1 and 2 (see the module docstring). The sform code may not be 0 (unknown), as
        the sform is what keeps the affine exact.
    compresslevel:
        gzip level 0-9 for ``.nii.gz``/``.mgz`` (and NRRD/MHA compression when > 0).
    extra_sidecar:
        More fields for the sidecar.
    source:
        The file the data came from, recorded in the sidecar.
    save_step:
        Constructor arguments of the ``SaveImage`` writing the file: the last step of the
        sidecar's rerunnable ``pipeline``.
    overwrite:
        Replace an existing image (and gpuprep sidecar); if False, an existing one raises
        :class:`~gpuprep.errors.OutputExistsError`. A JSON file at the sidecar's path that gpuprep
        did not write (e.g. a BIDS sidecar) is never replaced, and a folder at ``path`` is refused.
        Both are checked before anything is written; the image and its sidecar are then written
        together (both temporary files complete before either is renamed into place).

    Returns
    -------
    The path written.

    Example
    -------
    >>> import tempfile, pathlib, torch
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.nii.gz"
    >>> write_image(out, torch.zeros(1, 4, 4, 4), torch.eye(4)).name
    'x.nii.gz'
    """
    path = Path(path)
    fmt = write_format(path)
    if nifti_version not in (1, 2):
        raise ConfigError(f"write_image: nifti_version must be 1 or 2, got {nifti_version!r}")
    if not isinstance(compresslevel, int) or isinstance(compresslevel, bool) or not 0 <= compresslevel <= 9:
        raise ConfigError(f"write_image: compresslevel must be an integer from 0 to 9, got {compresslevel!r}")
    qcode = _xform_code(DEFAULT_QFORM_CODE if qform_code is None else qform_code, "qform_code")
    scode = _xform_code(DEFAULT_SFORM_CODE if sform_code is None else sform_code, "sform_code")
    if scode == 0:
        raise ConfigError("write_image: sform_code must be 1-5 (the sform holds the exact affine), got 0")
    check_bool("write_image", "overwrite", overwrite)
    check_output_file(path, overwrite=overwrite)
    if sidecar:
        check_output_file(sidecar_path(path), overwrite=overwrite, sidecar=True)
    voxels = _as_voxels(data, path)
    matrix = _as_affine(affine, path)
    if fmt == "mgh":
        voxels = _mgh_voxels(voxels, path)
    written_format = f"nifti{nifti_version}" if fmt == "nifti" else fmt
    record = None
    if sidecar:
        output = {
            "format": written_format,
            "shape": list(voxels.shape),
            "dtype": str(voxels.dtype),
            "affine": matrix,
            # Where the data were computed: a rerun is bit for bit identical on the same kind of device.
            "device": str(data.device) if isinstance(data, torch.Tensor) else "cpu",
        }
        record = make_sidecar(path, output=output, history=history, source=None if source is None else str(source),
                              extra=extra_sidecar, save_step=save_step)
    with contextlib.ExitStack() as sidecar_write:
        # The sidecar's temporary file is complete before the image is written, and renamed
        # right after it: a failure at any step leaves neither file half-written.
        if record is not None:
            sidecar_write.enter_context(atomic_path(sidecar_path(path))).write_bytes(dumps(record).encode())
        if fmt in ("nrrd", "mha"):
            from .itk import write_itk

            write_itk(path, voxels, matrix, compresslevel)
        else:
            image = _nibabel_image(voxels, matrix, fmt, nifti_version, qcode, scode)
            raw = image.to_bytes()
            if path.name.lower().endswith((".gz", ".mgz")):
                raw = gzip_fast.compress(raw, compresslevel)
            atomic_write_bytes(path, raw)
    return path


def _nibabel_image(voxels: np.ndarray, affine: np.ndarray, fmt: str, version: int, qcode: int, scode: int):
    array = voxels.transpose(1, 2, 3, 0)
    if array.shape[3] == 1:
        array = array[..., 0]
    if fmt == "mgh":
        return nib.MGHImage(array, affine)
    klass = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    image = klass(array, affine, dtype=array.dtype)
    image.set_sform(affine, code=scode)
    image.set_qform(affine, code=qcode)
    image.header.set_xyzt_units(xyz="mm")
    return image


def _as_voxels(data: Any, path: Path) -> np.ndarray:
    """A native-endian NumPy view/copy ``[C, I, J, K]`` of ``data`` in a dtype files can hold."""
    if isinstance(data, torch.Tensor):
        tensor = data.detach().cpu()
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        if tensor.is_complex():
            raise TransformError(f"cannot write {path}: complex data ({tensor.dtype}) are not supported")
        array = tensor.numpy()
    else:
        array = np.asarray(data)
    if array.ndim != 4 or 0 in array.shape:
        raise TransformError(f"cannot write {path}: data must be [C, D, H, W] with no empty axis, got "
                             f"shape {tuple(array.shape)}")
    if array.dtype.kind == "c" or array.dtype.kind not in "biuf":
        raise TransformError(f"cannot write {path}: unsupported dtype {array.dtype}; expected numbers")
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind == "f" and array.dtype.itemsize < 4:
        return array.astype(np.float32)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _as_affine(affine: Any, path: Path) -> np.ndarray:
    matrix = torch.as_tensor(affine, dtype=torch.float64).detach().cpu().numpy().copy()
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise TransformError(f"cannot write {path}: the affine must be a finite 4x4 matrix, got\n{matrix}")
    if np.linalg.matrix_rank(matrix[:3, :3]) < 3:
        raise TransformError(f"cannot write {path}: the affine is singular:\n{matrix}")
    return matrix


def _mgh_voxels(voxels: np.ndarray, path: Path) -> np.ndarray:
    """Convert to a dtype MGH can store, without changing any value, or raise."""
    if voxels.dtype in _MGH_DTYPES:
        return voxels
    if voxels.dtype == np.int8:
        return voxels.astype(np.int16)
    if voxels.dtype.kind in "iu":
        info = np.iinfo(np.int32)
        low, high = int(voxels.min()), int(voxels.max())
        if info.min <= low and high <= info.max:
            return voxels.astype(np.int32)
        raise TransformError(
            f"cannot write {path}: MGH stores at most int32, but the {voxels.dtype} values span "
            f"[{low}, {high}]; write NIfTI instead"
        )
    raise TransformError(
        f"cannot write {path}: MGH stores float32 at most, got {voxels.dtype}; "
        "cast to float32 first (data.float()) or write NIfTI"
    )


def _xform_code(code: int | str, name: str) -> int:
    if isinstance(code, str) and code in nib.nifti1.xform_codes.keys():
        return int(cast(SupportsInt, nib.nifti1.xform_codes.code[code]))  # nibabel types the codes as Hashable
    if isinstance(code, (int, np.integer)) and not isinstance(code, bool) and 0 <= int(code) <= 5:
        return int(code)
    raise ConfigError(
        f"write_image: {name} must be 0-5 or one of 'unknown', 'scanner', 'aligned', 'talairach', "
        f"'mni', 'template', got {code!r}"
    )
