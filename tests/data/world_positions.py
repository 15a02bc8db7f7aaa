"""Checks that an output grid holds, at each voxel's world position, what the input file holds there.

The reference is nibabel's reading of the input file (its data and its affine) and, between
voxel centres, ``scipy.ndimage.map_coordinates``: for every output voxel index ``v`` the world
position is ``affine @ v``; the input is sampled at ``inv(input_affine) @ world``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nibabel.affines import apply_affine
from scipy.ndimage import map_coordinates

import gpuprep as gp
from tests.conftest import oblique_affine

#: World positions must agree to this many millimetres.
WORLD_TOLERANCE_MM = 1e-3


def write_volume(path: Path, affine: np.ndarray, shape=(7, 8, 6), dtype=np.float32, seed=0) -> Path:
    """Write a NIfTI file of random values with nibabel and return its path."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 100, shape).astype(dtype) if np.dtype(dtype).kind in "iu" else rng.random(shape, dtype)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def las_affine() -> np.ndarray:
    """Left-Anterior-Superior axes, anisotropic, with an origin."""
    affine = np.diag([-1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = [40.0, -30.0, 12.0]
    return affine


def lps_affine() -> np.ndarray:
    """Left-Posterior-Superior axes (DICOM's), anisotropic, with an origin."""
    affine = np.diag([-1.2, -1.6, 3.0, 1.0])
    affine[:3, 3] = [25.0, 33.0, -14.0]
    return affine


def geometry_files(folder: Path) -> dict[str, Path]:
    """Synthetic LAS, LPS and oblique files written by nibabel, plus the real LAS and oblique files available."""
    files = {
        "las": write_volume(folder / "las.nii.gz", las_affine(), seed=1),
        "lps": write_volume(folder / "lps.nii.gz", lps_affine(), seed=2),
        "oblique": write_volume(folder / "oblique.nii.gz", oblique_affine(), seed=3),
    }
    return files


def real_files() -> dict[str, Path]:
    """Real scans shipped with nibabel (LAS, int16) and dipy (oblique, LPS-like axes)."""
    from nibabel.testing import data_path

    files = {"real_las": Path(data_path) / "anatomical.nii"}
    try:
        from dipy.data import get_fnames

        files["real_oblique"] = Path(get_fnames(name="aniso_vox"))
    except ImportError:  # dipy is a dev extra
        pass
    return files


def source_coordinates(source: Path, affine, shape) -> tuple[np.ndarray, np.ndarray]:
    """nibabel's data of ``source`` and, per voxel of an output grid, its continuous input index."""
    image = nib.load(source)
    data = np.asanyarray(image.dataobj).astype(np.float64)
    indices = np.indices(tuple(shape)).reshape(3, -1).T
    world = apply_affine(np.asarray(affine, dtype=np.float64), indices)
    return data, apply_affine(np.linalg.inv(image.affine), world)


def assert_same_world_values_exact(volume, affine, source: Path) -> None:
    """Every output voxel sits on an input voxel centre (to 1e-3 mm) and holds its value, or 0 outside.

    For steps that only permute, flip, crop or pad voxels.
    """
    volume = _as_array(volume)
    data, coordinates = source_coordinates(source, affine, volume.shape)
    nearest = np.round(coordinates)
    offsets_mm = np.linalg.norm((nib.load(source).affine[:3, :3] @ (coordinates - nearest).T), axis=0)
    assert offsets_mm.max() <= WORLD_TOLERANCE_MM, f"voxel centres are {offsets_mm.max():.3g} mm off the input's"
    inside = np.all((nearest >= 0) & (nearest < np.array(data.shape[:3])), axis=1)
    assert inside.any(), "the output grid does not overlap the input"
    index = tuple(nearest[inside].astype(int).T)
    np.testing.assert_array_equal(volume.reshape(-1)[inside], data[index])
    np.testing.assert_array_equal(volume.reshape(-1)[~inside], 0)


def assert_same_world_values_interpolated(volume, affine, source: Path, atol: float = 1e-4) -> None:
    """Inside the input, each output voxel equals the trilinear interpolation of the input at its world position.

    The tolerance is ``atol`` plus float32 rounding: 1e-5 of the input's largest magnitude (a real
    scan's values reach 10^4, where float32 coordinates and weights err by ~0.04). A shift of 1e-3 mm
    moves a real scan's steepest voxels by more than that.
    """
    volume = _as_array(volume)
    data, coordinates = source_coordinates(source, affine, volume.shape)
    inside = np.all((coordinates >= 0) & (coordinates <= np.array(data.shape[:3]) - 1), axis=1)
    assert inside.sum() >= 8, "the output grid barely overlaps the input"
    expected = map_coordinates(data, coordinates[inside].T, order=1)
    tolerance = atol + 1e-5 * np.abs(data).max()
    np.testing.assert_allclose(volume.reshape(-1)[inside], expected, atol=tolerance, rtol=0)


def _as_array(volume) -> np.ndarray:
    """A 3D float64 array from ``[D, H, W]`` or ``[1, D, H, W]`` tensors or arrays."""
    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    array = array.astype(np.float64)
    return array[0] if array.ndim == 4 else array


def assert_same_voxels_and_grids(converted, sample, keys) -> None:
    """A sample converted there and back has the same voxels, affines and original grids as ``sample``."""
    for key in keys:
        assert torch.equal(converted[key], sample[key])
        ours, theirs = gp.get_meta(sample, key), gp.get_meta(converted, key)
        torch.testing.assert_close(theirs["affine"], ours["affine"])
        torch.testing.assert_close(theirs["original_affine"], ours["original_affine"])
        assert torch.equal(theirs["original_shape"], ours["original_shape"])
