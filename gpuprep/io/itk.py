"""NRRD, MetaImage and DICOM through SimpleITK (optional: ``pip install "gpuprep[io]"``).

ITK describes a grid by ``origin``, ``spacing`` and a ``direction`` matrix in LPS+ world
coordinates, and SimpleITK hands out arrays in ``(z, y, x)`` order. gpuprep uses one RAS+ affine
and ``(i, j, k)`` order, so::

    affine_lps = [[direction @ diag(spacing), origin], [0, 0, 0, 1]]
    affine_ras = diag(-1, -1, 1, 1) @ affine_lps

and the array axes are reversed. SimpleITK is imported only when one of these formats is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageReadError, ImageWriteError, MissingDependencyError
from .atomic import atomic_path
from .detached import is_header_format
from .dicom import read_dicom_series
from .itk_guard import check_itk_header
from .limits import check_shape

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def import_sitk(path: str | os.PathLike, action: str) -> Any:
    """Import SimpleITK, or raise :class:`MissingDependencyError` naming the file and the fix."""
    try:
        import SimpleITK
    except ImportError:
        raise MissingDependencyError(
            f"cannot {action} {path}: this format needs SimpleITK; "
            'install it with: pip install "gpuprep[io]"'
        ) from None
    return SimpleITK


def read_itk(path: Path, *, dicom: bool = False, dicom_check: str = "error") -> tuple[np.ndarray, np.ndarray, Any]:
    """Read a file (or a folder holding one DICOM series) with SimpleITK.

    A DICOM folder, or a DICOM file (``dicom=True``), reads the whole series after checking its
    slice positions (:func:`gpuprep.io.dicom.read_dicom_series`, ``dicom_check``).

    Returns
    -------
    voxels, affine, keepalive:
        A NumPy view ``[C, I, J, K]`` on the image's buffer (vector components and any axes
        after the third become channels), the RAS+ affine, and the SimpleITK image that owns
        the buffer (keep it until the view is copied).

    Raises
    ------
    ImageReadError
        For a file SimpleITK cannot read, and, before SimpleITK sees it, for an NRRD or
        MetaImage header that names a data file outside its folder or declares more voxels
        than its data holds (:func:`gpuprep.io.itk_guard.check_itk_header`).
    """
    sitk = import_sitk(path, "read")
    if not path.is_dir() and is_header_format(path):
        check_itk_header(path)  # before SimpleITK opens data files or allocates the declared size
    try:
        image = read_dicom_series(sitk, path, dicom_check) if dicom or path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ImageReadError(f"{path}: SimpleITK cannot read it: {_first_line(error)}") from None
    size = tuple(int(n) for n in image.GetSize())
    check_shape(size, path)
    dim = image.GetDimension()
    array = sitk.GetArrayViewFromImage(image)
    vector = array.ndim == dim + 1
    # Array axes: (s[dim-1], ..., s[3], k, j, i[, component]); extra axes and components -> channels.
    extra = list(range(dim - 3))
    components = [dim] if vector else []
    voxels = array.transpose(*extra, *components, dim - 1, dim - 2, dim - 3)
    voxels = voxels.reshape(-1, *size[:3])
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[:3]
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)[:3]
    return voxels, _LPS_TO_RAS @ affine, image


def write_itk(path: Path, voxels: np.ndarray, affine: np.ndarray, compresslevel: int) -> None:
    """Write ``voxels`` ``[C, I, J, K]`` with RAS+ ``affine`` atomically (format by extension).

    Several channels are written as a vector image (one component per channel).
    """
    sitk = import_sitk(path, "write")
    channels = voxels.shape[0]
    zyx = voxels.transpose(3, 2, 1, 0)
    zyx = np.ascontiguousarray(zyx[..., 0] if channels == 1 else zyx)
    image = sitk.GetImageFromArray(zyx, isVector=channels > 1)
    lps = _LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compresslevel > 0, compresslevel if compresslevel > 0 else -1)
        except RuntimeError as error:
            raise ImageWriteError(f"cannot write {path}: SimpleITK failed: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages start with a source location; the last line says what went wrong.
    return lines[-1] if lines else type(error).__name__
