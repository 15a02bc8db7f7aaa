"""Load -> save -> load gives back exactly the same data and affine, in every writable format."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep as gp
import gpuprep.io as gio
from tests.conftest import oblique_affine

SHAPE = (8, 9, 10)


def _axis_affine(codes: str) -> np.ndarray:
    """A non-oblique affine whose voxel axes point along ``codes`` (e.g. 'LAS')."""
    ornt = nib.orientations.axcodes2ornt(tuple(codes))
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for axis, (world, flip) in enumerate(ornt):
        affine[int(world), axis] = flip * (0.75 + 0.5 * axis)
    affine[:3, 3] = [-40.0, 22.5, 13.0]
    return affine


def _volume(dtype, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(7)
    if np.dtype(dtype).kind == "f":
        return (rng.normal(size=shape) * 50).astype(dtype)
    return rng.integers(0, 200, size=shape).astype(dtype)


def _roundtrip(source, out_path, **kwargs):
    data, meta = gio.read_image(source)
    gio.write_image(out_path, data, meta["affine"], **kwargs)
    again, meta_again = gio.read_image(out_path)
    return (data, meta), (again, meta_again)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
@pytest.mark.parametrize("geometry", ["oblique", "RAS", "LAS", "LPS"])
def test_nifti_roundtrip_exact(tmp_path, dtype, ext, geometry):
    affine = oblique_affine() if geometry == "oblique" else _axis_affine(geometry)
    source = tmp_path / f"src{ext}"
    nib.save(nib.Nifti1Image(_volume(dtype), affine, dtype=dtype), source)
    (data, meta), (again, meta_again) = _roundtrip(source, tmp_path / f"out{ext}")
    assert again.dtype == data.dtype
    assert torch.equal(again, data)
    assert torch.equal(meta_again["affine"], meta["affine"])
    # and nibabel reads the written file the same way
    written = nib.load(tmp_path / f"out{ext}")
    np.testing.assert_array_equal(written.affine, nib.load(source).affine)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(nib.load(source).dataobj))
    assert gp.axcodes_of(meta_again["affine"]) == gp.axcodes_of(affine)


def test_nifti2_roundtrip_keeps_float64_affine(tmp_path):
    source = tmp_path / "src.nii.gz"
    affine = oblique_affine()  # float64 values that float32 cannot hold
    nib.save(nib.Nifti2Image(_volume(np.float32), affine), source)
    (data, meta), (again, meta_again) = _roundtrip(source, tmp_path / "out.nii.gz", nifti_version=2)
    assert torch.equal(again, data)
    assert torch.equal(meta_again["affine"], meta["affine"])
    np.testing.assert_array_equal(meta_again["affine"].numpy(), affine)
    assert meta_again["format"] == "nifti2"


@pytest.mark.parametrize("channels", [2, 3])
@pytest.mark.parametrize("ext", [".nii.gz", ".mgz"])
def test_4d_roundtrip(tmp_path, channels, ext):
    source = tmp_path / f"src{ext}"
    image = nib.MGHImage if ext == ".mgz" else nib.Nifti1Image
    nib.save(image(_volume(np.float32, (*SHAPE, channels)), oblique_affine()), source)
    (data, meta), (again, meta_again) = _roundtrip(source, tmp_path / f"out{ext}")
    assert tuple(again.shape) == (channels, *SHAPE)
    assert torch.equal(again, data)
    tolerance = 1e-5 if ext == ".mgz" else 0.0  # see test_mgh_oblique_roundtrip
    np.testing.assert_allclose(meta_again["affine"].numpy(), meta["affine"].numpy(), rtol=0, atol=tolerance)
    assert nib.load(tmp_path / f"out{ext}").shape == (*SHAPE, channels)


@pytest.mark.parametrize("ext", [".mgh", ".mgz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32])
@pytest.mark.parametrize("geometry", ["RAS", "LIA"])
def test_mgh_roundtrip_exact(tmp_path, ext, dtype, geometry):
    source = tmp_path / f"src{ext}"
    nib.save(nib.MGHImage(_volume(dtype), _axis_affine(geometry)), source)
    (data, meta), (again, meta_again) = _roundtrip(source, tmp_path / f"out{ext}")
    assert again.dtype == data.dtype
    assert torch.equal(again, data)
    assert torch.equal(meta_again["affine"], meta["affine"])


def test_mgh_oblique_roundtrip(tmp_path):
    """Equal to float32 precision only: nibabel builds an MGH affine from float32 products
    (``Mdc * delta``), so dividing it back may land one float32 step away."""
    source = tmp_path / "src.mgz"
    nib.save(nib.MGHImage(_volume(np.float32), oblique_affine()), source)
    (data, meta), (again, meta_again) = _roundtrip(source, tmp_path / "out.mgz")
    assert torch.equal(again, data)
    np.testing.assert_allclose(meta_again["affine"].numpy(), meta["affine"].numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_itk_roundtrip(tmp_path, ext, dtype):
    pytest.importorskip("SimpleITK")
    source = tmp_path / "src.nii.gz"
    nib.save(nib.Nifti1Image(_volume(dtype), oblique_affine(), dtype=dtype), source)
    data, meta = gio.read_image(source)
    gio.write_image(tmp_path / f"mid{ext}", data, meta["affine"])
    (mid, mid_meta), (again, meta_again) = _roundtrip(tmp_path / f"mid{ext}", tmp_path / f"out{ext}")
    assert torch.equal(mid, data) and torch.equal(again, data)
    # ITK keeps spacing and direction apart, so the affine is rebuilt with float64 rounding.
    np.testing.assert_allclose(mid_meta["affine"].numpy(), meta["affine"].numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(meta_again["affine"].numpy(), meta["affine"].numpy(), rtol=0, atol=1e-12)


def test_labels_keep_integer_dtype_and_values(tmp_path):
    labels = np.random.default_rng(0).choice([0, 2, 41, 1000], size=SHAPE).astype(np.int16)
    nib.save(nib.Nifti1Image(labels, oblique_affine(), dtype=np.int16), tmp_path / "seg.nii.gz")
    (data, _), (again, _) = _roundtrip(tmp_path / "seg.nii.gz", tmp_path / "out.nii.gz")
    assert data.dtype == torch.int16 and again.dtype == torch.int16
    assert set(torch.unique(again).tolist()) == {0, 2, 41, 1000}


@pytest.mark.parametrize("ext", [".nii.gz", ".mgz", ".nrrd"])
def test_write_from_torch_dtypes(tmp_path, ext):
    if ext == ".nrrd":
        pytest.importorskip("SimpleITK")
    cases = {
        torch.bool: torch.uint8,
        torch.float16: torch.float32,
        torch.bfloat16: torch.float32,
        torch.int64: torch.int32 if ext == ".mgz" else torch.int64,
        torch.int8: torch.int16 if ext == ".mgz" else torch.int8,
    }
    for index, (written, expected) in enumerate(cases.items()):
        data = (torch.arange(2 * 3 * 4 * 5).reshape(1, 2 * 3, 4, 5) % 2).to(written)
        path = gio.write_image(tmp_path / f"x{index}{ext}", data, torch.eye(4), sidecar=False)
        loaded, _ = gio.read_image(path)
        assert loaded.dtype == expected, written
        assert torch.equal(loaded, data.to(expected))
