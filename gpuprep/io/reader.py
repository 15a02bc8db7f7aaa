"""Read NIfTI, MGH and (through SimpleITK) NRRD, MetaImage and DICOM files into tensors.

:func:`read_image` returns a channel-first tensor ``[C, D, H, W]`` whose spatial axes are the
file's voxel axes ``i, j, k`` and a metadata dict whose ``"affine"`` maps those indices to RAS+
millimetres (nibabel's ``img.affine``).

How it is fast: a ``.nii.gz``/``.mgz`` file is read in one go, inflated with ISA-L when
installed (:mod:`gpuprep.io.gzip_fast`), its header parsed by nibabel from the bytes, and the
voxels then copied **once** from the inflated bytes into the tensor (the copy also does the
Fortran-to-C reordering, byte swapping, dtype widening and intensity scaling). Uncompressed
files are memory-mapped read-only instead of read. Input files are never opened for writing.

Dtype policy (see :func:`natural_dtype`): integers stay integers (uint16 -> int32, uint32 ->
int64, bool -> uint8), float32/float64 stay as they are (float16 -> float32), and data with
``scl_slope``/``scl_inter`` scaling become float32 (float64 for float64 on disk) with the values
of nibabel's ``get_fdata()``.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import torch
from nibabel.arrayproxy import ArrayProxy

from ..errors import ConfigError, ImageReadError
from ..sample import make_meta
from . import gzip_fast, limits
from .dicom import check_dicom_check

NONFINITE_POLICIES = ("error", "zero", "keep")
_NIFTI_EXTENSIONS = (".nii.gz", ".nii")
_HEADER_SIZES = {"nifti1": 348, "nifti2": 540, "mgh": 284}
_HEADER_BYTES = max(_HEADER_SIZES.values())
_MGH_EXTENSIONS = (".mgz", ".mgh")
_ITK_EXTENSIONS = {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mhd", ".dcm": "dicom"}
#: File name endings :func:`read_image` understands (plus DICOM folders and DICOM files without one).
READ_EXTENSIONS = (*_NIFTI_EXTENSIONS, *_MGH_EXTENSIONS, *_ITK_EXTENSIONS)

# On-disk dtype -> dtype of the tensor when no scaling applies (torch lacks full uint16/uint32 support).
# The nibabel image classes this reader opens (Nifti2Image is a Nifti1Image).
_NibabelClass = type[nib.Nifti1Image] | type[nib.MGHImage]

_WIDER: dict[np.dtype, np.dtype] = {
    np.dtype(np.bool_): np.dtype(np.uint8),
    np.dtype(np.uint16): np.dtype(np.int32),
    np.dtype(np.uint32): np.dtype(np.int64),
    np.dtype(np.uint64): np.dtype(np.int64),
    np.dtype(np.float16): np.dtype(np.float32),
}
_TORCH_OF_NUMPY = {
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.bool_): torch.bool,
}


@dataclass
class RawVolume:
    """Voxels as stored (any dtype, byte order and strides) plus what is needed to interpret them.

    ``voxels`` is a NumPy view ``[C, I, J, K]`` on the file's buffer; ``keepalive`` holds
    whatever owns that buffer (a SimpleITK image, say) until the copy into a tensor is made.
    """

    voxels: np.ndarray
    affine: np.ndarray
    format: str
    slope: float = 1.0
    inter: float = 0.0
    qform_code: int | None = None
    sform_code: int | None = None
    keepalive: Any = None


def read_image(
    path: str | os.PathLike, *, dtype: Any = None, nonfinite: str = "error", dicom_check: str = "error"
) -> tuple[torch.Tensor, dict]:
    """Read an image file (or DICOM folder) into a tensor ``[C, D, H, W]`` and its metadata.

    Parameters
    ----------
    path:
        ``.nii``, ``.nii.gz`` (NIfTI-1 or NIfTI-2), ``.mgh``, ``.mgz``; with SimpleITK also
        ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, a ``.dcm`` file or a folder holding one DICOM
        series. A 4D file's fourth axis (and any further ones, flattened) become channels.
    dtype:
        Cast the result to this dtype (a ``torch.dtype`` or a name such as ``"float32"``).
        None keeps the dtype policy of the module docstring.
    nonfinite:
        What to do with NaN/Inf voxels: ``"error"`` (default) raises, ``"zero"`` replaces them
        with 0, warns and records the count in ``meta["nonfinite_replaced"]``, ``"keep"``
        leaves them (and skips the check).
    dicom_check:
        A DICOM series (a folder, or any one of its files, which reads the whole series) whose
        slices are not one evenly spaced stack (a missing slice, unequal gaps, two echoes
        sharing a Series Instance UID, several orientations) raises ``"error"`` (default), naming
        the folder and the slice positions, or is read with a warning under ``"warn"``
        (:mod:`gpuprep.io.dicom`).

    Returns
    -------
    data, meta:
        The tensor and a dict from :func:`gpuprep.make_meta` (affine float64 RAS+ mm, filename,
        original shape) plus ``"format"`` ("nifti1", "nifti2", "mgh", "nrrd", "mha", "mhd",
        "dicom"), ``"qform_code"``/``"sform_code"`` (NIfTI; None for other formats) and
        ``"nonfinite_replaced"``.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ImageReadError
        The file is not a readable 3D/4D image: unknown type, truncated or corrupt data,
        zero-sized or 2D shape, complex voxels, a singular or non-finite affine, NaN/Inf
        voxels under ``nonfinite="error"``; and, before anything is allocated, a crafted file:
        negative or overflowing dims, more declared voxels than the data can hold or than
        :data:`gpuprep.io.limits.MAX_IMAGE_BYTES`, a gzip stream inflating past its declared
        size, an NRRD/MetaImage data file outside the header's folder.
    MissingDependencyError
        A SimpleITK format without SimpleITK installed.

    Example
    -------
    >>> import gpuprep as gp
    >>> data, meta = gp.read_image(gp.data.sample_brain_paths()["image"])
    >>> data.shape, data.dtype, meta["affine"].dtype
    (torch.Size([1, 99, 117, 95]), torch.uint8, torch.float64)
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ConfigError(f"read_image: nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    target = resolve_dtype(dtype, "read_image: dtype")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    volume = _read_raw(path, check_dicom_check(dicom_check))
    _check_volume(volume, path)
    data = to_tensor(volume, target, path)
    replaced = _handle_nonfinite(data, nonfinite, path)
    if target is not None and data.dtype != target:
        data = data.to(target)
    meta = make_meta(torch.from_numpy(volume.affine), filename=str(path), spatial_shape=data.shape[1:])
    meta.update(
        format=volume.format,
        qform_code=volume.qform_code,
        sform_code=volume.sform_code,
        nonfinite_replaced=replaced,
    )
    return data, meta


def resolve_dtype(dtype: Any, owner: str) -> torch.dtype | None:
    """Turn a ``torch.dtype``, a name like ``"float32"``/``"torch.int16"`` or None into a dtype.

    Example
    -------
    >>> resolve_dtype("float32", "dtype")
    torch.float32
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        candidate = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(candidate, torch.dtype):
            return candidate
    raise ConfigError(f"{owner} must be a torch dtype or a name such as 'float32', got {dtype!r}")


def dtype_name(dtype: torch.dtype | None) -> str | None:
    """The short name of a torch dtype (``torch.float32`` -> ``"float32"``), for configs and sidecars."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def natural_dtype(stored: np.dtype, scaled: bool) -> np.dtype:
    """The dtype :func:`read_image` gives data stored as ``stored`` (see the module docstring)."""
    stored = stored.newbyteorder("=")
    if scaled:
        return np.dtype(np.float64) if stored == np.float64 else np.dtype(np.float32)
    if stored.kind == "f" and stored.itemsize > 8:
        return np.dtype(np.float64)
    return _WIDER.get(stored, stored)


def to_tensor(volume: RawVolume, target: torch.dtype | None, path: Path) -> torch.Tensor:
    """Copy ``volume.voxels`` once into a new C-contiguous tensor, applying the dtype policy.

    A requested integer-to-anything cast is done in the same copy; other casts are left to the
    caller (after the non-finite check).
    """
    raw = volume.voxels
    if raw.dtype.kind == "c":
        raise ImageReadError(
            f"{path}: complex voxels ({raw.dtype}) are not supported; save magnitude and phase as real images"
        )
    if raw.dtype.kind not in "biuf":
        raise ImageReadError(f"{path}: unsupported voxel type {raw.dtype} (e.g. RGB); expected numbers")
    scaled = volume.slope != 1.0 or volume.inter != 0.0
    out_dtype = _TORCH_OF_NUMPY[natural_dtype(raw.dtype, scaled)]
    if target is not None and target in _TORCH_OF_NUMPY.values() and not scaled and raw.dtype.kind in "biu":
        out_dtype = target
    elif raw.dtype.newbyteorder("=") == np.uint64 and raw.size and raw.max() > np.iinfo(np.int64).max:
        raise ImageReadError(f"{path}: uint64 voxels above {np.iinfo(np.int64).max} do not fit int64")
    out = torch.empty(raw.shape, dtype=out_dtype)
    out_np = out.numpy()
    # One 2D slab at a time: the (i, k) transpose of a slab stays in cache, which made the
    # Fortran-to-C copy 1.3-1.8x faster than one whole-volume assignment (and than torch's
    # multi-threaded copy_ on a busy 2-core machine).
    for j in range(raw.shape[2]):
        if scaled:
            slab = raw[:, :, j, :].astype(np.float64)
            slab *= volume.slope
            slab += volume.inter
            out_np[:, :, j, :] = slab
        else:
            out_np[:, :, j, :] = raw[:, :, j, :]
    return out


def _handle_nonfinite(data: torch.Tensor, policy: str, path: Path) -> int:
    if policy == "keep" or not data.is_floating_point() or data.numel() == 0:
        return 0
    # NumPy's isfinite is a single vectorised pass; torch.isfinite on the CPU is ~20x slower.
    array = data.numpy()
    finite = np.isfinite(array)
    if finite.all():
        return 0
    count = int(array.size - np.count_nonzero(finite))
    if policy == "error":
        raise ImageReadError(
            f"{path}: {count} of {data.numel()} voxels are not finite (NaN or Inf); "
            "pass nonfinite='zero' to replace them with 0"
        )
    np.nan_to_num(array, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    warnings.warn(f"{path}: replaced {count} non-finite voxels (NaN or Inf) with 0", stacklevel=3)
    return count


def _check_volume(volume: RawVolume, path: Path) -> None:
    affine = volume.affine
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ImageReadError(f"{path}: the voxel-to-world affine is not finite:\n{affine}")
    if np.linalg.matrix_rank(affine[:3, :3]) < 3:
        raise ImageReadError(
            f"{path}: the voxel-to-world affine is singular (a zero voxel size or collinear axes):\n{affine}"
        )


def _read_raw(path: Path, dicom_check: str = "error") -> RawVolume:
    if path.is_dir():
        return _read_itk(path, "dicom", dicom_check)
    name = path.name.lower()
    if name.endswith(_NIFTI_EXTENSIONS):
        return _read_nibabel(path, "nifti")
    if name.endswith(_MGH_EXTENSIONS):
        return _read_nibabel(path, "mgh")
    for extension, fmt in _ITK_EXTENSIONS.items():
        if name.endswith(extension):
            return _read_itk(path, fmt, dicom_check)
    with open(path, "rb") as stream:
        head = stream.read(132)
    if head[128:132] == b"DICM":  # DICOM files often have no extension
        return _read_itk(path, "dicom", dicom_check)
    raise ImageReadError(
        f"{path}: unknown image type (extension {''.join(path.suffixes) or 'none'}); "
        f"supported: {', '.join(READ_EXTENSIONS)}, DICOM files and DICOM folders"
    )


def _read_itk(path: Path, fmt: str, dicom_check: str = "error") -> RawVolume:
    from .itk import read_itk

    voxels, affine, keepalive = read_itk(path, dicom=fmt == "dicom", dicom_check=dicom_check)
    return RawVolume(voxels, affine, fmt, keepalive=keepalive)


def _read_nibabel(path: Path, family: str) -> RawVolume:
    with open(path, "rb") as stream:
        head = stream.read(_HEADER_BYTES)
    packed = None
    if gzip_fast.is_gzip(head):
        packed = path.read_bytes()
        head = gzip_fast.decompress_head(packed, _HEADER_BYTES, source=str(path))
    klass, fmt = _nibabel_class(head, family, path)
    # Check the header's dims with Python integers before nibabel or NumPy sees them, and inflate
    # no more than the header declares: a gzip bomb stops just past that.
    offset, nbytes = _declared_layout(klass, fmt, head, path)
    if packed is not None:
        limits.check_declared_bytes(path, nbytes, len(packed), "deflate")
        limit = offset + nbytes + limits.MAX_TRAILING_BYTES
        buffer: Any = gzip_fast.decompress(packed, source=str(path), max_size=limit)
        size = len(buffer)
    else:
        buffer, size = None, path.stat().st_size
    try:
        if buffer is not None:
            img = klass.from_bytes(buffer)
        else:
            with open(path, "rb") as stream:
                img = klass.from_stream(stream)
        affine = np.asarray(img.affine, dtype=np.float64)
        proxy = cast(ArrayProxy, img.dataobj)  # from_bytes/from_stream keep the data on disk: a proxy
        shape = tuple(int(n) for n in proxy.shape)
        dtype, offset, order = np.dtype(proxy.dtype), int(proxy.offset), proxy.order
        slope, inter = float(proxy.slope), float(proxy.inter)
    except Exception as error:
        raise ImageReadError(f"{path}: not a valid {fmt} file: {error}") from None
    limits.check_shape(shape, path)
    needed = offset + math.prod(shape) * dtype.itemsize
    if size < needed:
        raise ImageReadError(
            f"{path}: truncated image data: the header promises {needed - offset} bytes of voxels "
            f"after offset {offset}, the {'inflated ' if buffer is not None else ''}file holds "
            f"{max(size - offset, 0)}"
        )
    if buffer is None:
        buffer = np.memmap(path, dtype=np.uint8, mode="r")
    flat = np.ndarray(shape, dtype=dtype, buffer=buffer, offset=offset, order=order)
    voxels = flat.reshape((*shape[:3], -1), order="F").transpose(3, 0, 1, 2)
    codes = {}
    if fmt.startswith("nifti"):
        codes = {"qform_code": int(img.header["qform_code"]), "sform_code": int(img.header["sform_code"])}
    return RawVolume(voxels, affine, fmt, slope=slope, inter=inter, **codes)


def _declared_layout(klass: _NibabelClass, fmt: str, head: bytes, path: Path
                     ) -> tuple[int, int]:
    """Where the voxels a NIfTI/MGH header declares start and how many bytes they take, dims checked.

    Raises ImageReadError for a header nibabel cannot parse, a NIfTI ``dim[0]`` outside 1-7, and
    dims that are negative or too large (:func:`gpuprep.io.limits.checked_shape`).
    """
    options = {}  # MGH is always big-endian
    if fmt != "mgh":  # NIfTI's byte order from sizeof_hdr (nibabel guesses it from dim[0], checked here)
        options["endianness"] = "<" if struct.unpack("<i", head[:4])[0] in _HEADER_SIZES.values() else ">"
    try:
        header = klass.header_class(head[: _HEADER_SIZES[fmt]], check=False, **options)
        itemsize = header.get_data_dtype().itemsize
        offset = int(header.get_data_offset())
        dim = [int(n) for n in header["dim" if fmt.startswith("nifti") else "dims"]]
    except Exception as error:  # nibabel raises many types for a bad header
        raise ImageReadError(f"{path}: not a valid {fmt} file: {error}") from None
    if fmt.startswith("nifti"):
        if not 1 <= dim[0] <= 7:
            raise ImageReadError(f"{path}: the header's dim[0] (number of axes) is {dim[0]}; NIfTI allows 1 to 7")
        dim = dim[1 : dim[0] + 1]
    if offset < 0:
        raise ImageReadError(f"{path}: the header's voxel offset is negative: {offset}")
    _, nbytes = limits.checked_shape(path, dim, itemsize)
    return offset, nbytes


def _nibabel_class(head: bytes, family: str, path: Path) -> tuple[_NibabelClass, str]:
    if len(head) < 4:
        raise ImageReadError(f"{path}: not an image: the file holds only {len(head)} bytes")
    if family == "mgh":
        version = struct.unpack(">i", head[:4])[0]
        if version != 1:
            raise ImageReadError(f"{path}: not an MGH file: its version field is {version}, expected 1")
        return nib.MGHImage, "mgh"
    sizes = {struct.unpack(order + "i", head[:4])[0] for order in "<>"}
    if 348 in sizes:
        return nib.Nifti1Image, "nifti1"
    if 540 in sizes:
        return nib.Nifti2Image, "nifti2"
    raise ImageReadError(
        f"{path}: not a NIfTI file: its header size field is {min(sizes, key=abs)} "
        "(NIfTI-1 has 348, NIfTI-2 540)"
    )
