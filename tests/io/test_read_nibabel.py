"""read_image on NIfTI and MGH files, checked against nibabel's own reading."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep.io as gio
from gpuprep.io import gzip_fast
from tests.conftest import oblique_affine

SHAPE = (9, 10, 11)


def _data(dtype, shape=SHAPE, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 60000), size=shape, endpoint=True).astype(dtype)


def _reference(path) -> tuple[np.ndarray, np.ndarray]:
    """nibabel's data [C, I, J, K] (channels from the 4th+ axes) and affine."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    data = data.reshape((*data.shape[:3], -1), order="F").transpose(3, 0, 1, 2)
    return data, img.affine


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.uint8, torch.uint8),
        (np.int8, torch.int8),
        (np.int16, torch.int16),
        (np.int32, torch.int32),
        (np.int64, torch.int64),
        (np.uint16, torch.int32),
        (np.uint32, torch.int64),
        (np.float32, torch.float32),
        (np.float64, torch.float64),
    ],
)
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_dtypes_and_values_match_nibabel(tmp_path, dtype, expected, ext):
    path = tmp_path / f"img{ext}"
    nib.save(nib.Nifti1Image(_data(dtype), oblique_affine(), dtype=dtype), path)
    data, meta = gio.read_image(path)
    reference, affine = _reference(path)
    assert data.dtype == expected
    assert data.is_contiguous()
    np.testing.assert_array_equal(data.numpy(), reference)
    np.testing.assert_array_equal(meta["affine"].numpy(), affine)
    assert meta["affine"].dtype == torch.float64
    assert meta["format"] == "nifti1"
    assert meta["filename"] == str(path)
    assert meta["original_shape"].tolist() == list(SHAPE)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
def test_scaled_data_match_get_fdata(tmp_path, dtype):
    img = nib.Nifti1Image(_data(dtype), oblique_affine(), dtype=dtype)
    img.header.set_slope_inter(0.37, -12.5)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, path)
    data, _ = gio.read_image(path)
    expected = nib.load(path).get_fdata()
    assert data.dtype == (torch.float64 if dtype == np.float64 else torch.float32)
    np.testing.assert_array_equal(data[0].numpy(), expected.astype(data.numpy().dtype))


def test_slope_one_inter_zero_is_not_scaled(tmp_path):
    img = nib.Nifti1Image(_data(np.int16), np.eye(4), dtype=np.int16)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, tmp_path / "a.nii")
    data, _ = gio.read_image(tmp_path / "a.nii")
    assert data.dtype == torch.int16


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64, np.uint16])
def test_big_endian_file(tmp_path, dtype):
    big = np.dtype(dtype).newbyteorder(">")
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(big)
    img = nib.Nifti1Image(_data(dtype).astype(big), oblique_affine(), header=header)
    path = tmp_path / "big.nii.gz"
    nib.save(img, path)
    assert nib.load(path).header.endianness == ">"
    data, meta = gio.read_image(path)
    reference, affine = _reference(path)
    np.testing.assert_array_equal(data.numpy(), reference)
    np.testing.assert_array_equal(meta["affine"].numpy(), affine)
    np.testing.assert_array_equal(data.numpy(), nib.load(path).get_fdata()[None])


def test_nifti2(tmp_path):
    path = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti2Image(_data(np.float32), oblique_affine()), path)
    data, meta = gio.read_image(path)
    reference, affine = _reference(path)
    np.testing.assert_array_equal(data.numpy(), reference)
    np.testing.assert_array_equal(meta["affine"].numpy(), affine)
    assert meta["format"] == "nifti2"


@pytest.mark.parametrize("shape", [(6, 7, 8, 3), (6, 7, 8, 1, 4), (6, 7, 8, 2, 3)])
def test_4d_and_5d_axes_become_channels(tmp_path, shape):
    path = tmp_path / "multi.nii.gz"
    nib.save(nib.Nifti1Image(_data(np.float32, shape), np.eye(4)), path)
    data, meta = gio.read_image(path)
    reference, _ = _reference(path)
    assert tuple(data.shape) == (int(np.prod(shape[3:])), *shape[:3])
    np.testing.assert_array_equal(data.numpy(), reference)
    assert meta["original_shape"].tolist() == list(shape[:3])


def test_singleton_axis_is_fine(tmp_path):
    path = tmp_path / "slab.nii"
    nib.save(nib.Nifti1Image(_data(np.int16, (9, 10, 1)), np.eye(4)), path)
    data, _ = gio.read_image(path)
    assert tuple(data.shape) == (1, 9, 10, 1)


def test_qform_and_sform_codes_in_meta(tmp_path):
    img = nib.Nifti1Image(_data(np.int16), oblique_affine())
    img.set_qform(oblique_affine(), code=1)
    img.set_sform(oblique_affine(), code=4)
    nib.save(img, tmp_path / "codes.nii.gz")
    _, meta = gio.read_image(tmp_path / "codes.nii.gz")
    assert (meta["qform_code"], meta["sform_code"]) == (1, 4)


@pytest.mark.parametrize("ext", [".mgh", ".mgz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32])
def test_mgh(tmp_path, ext, dtype):
    path = tmp_path / f"brain{ext}"
    nib.save(nib.MGHImage(_data(dtype), oblique_affine()), path)
    data, meta = gio.read_image(path)
    reference, affine = _reference(path)
    assert data.dtype == torch.from_numpy(np.zeros(1, dtype)).dtype
    np.testing.assert_array_equal(data.numpy(), reference)
    np.testing.assert_array_equal(meta["affine"].numpy(), affine)
    assert meta["format"] == "mgh"
    assert meta["qform_code"] is None and meta["sform_code"] is None


def test_mgh_frames_become_channels(tmp_path):
    path = tmp_path / "frames.mgz"
    nib.save(nib.MGHImage(_data(np.float32, (6, 7, 8, 3)), np.eye(4)), path)
    data, _ = gio.read_image(path)
    np.testing.assert_array_equal(data.numpy(), _reference(path)[0])


@pytest.mark.parametrize("dtype", ["float64", torch.float64, "torch.float64"])
def test_dtype_argument_casts(tmp_path, dtype):
    nib.save(nib.Nifti1Image(_data(np.uint16), np.eye(4), dtype=np.uint16), tmp_path / "a.nii.gz")
    data, _ = gio.read_image(tmp_path / "a.nii.gz", dtype=dtype)
    assert data.dtype == torch.float64
    np.testing.assert_array_equal(data.numpy(), _reference(tmp_path / "a.nii.gz")[0].astype(np.float64))


def test_dtype_argument_on_float_data(tmp_path):
    nib.save(nib.Nifti1Image(_data(np.float64), np.eye(4)), tmp_path / "a.nii.gz")
    data, _ = gio.read_image(tmp_path / "a.nii.gz", dtype="float16")
    assert data.dtype == torch.float16
    expected = torch.from_numpy(_reference(tmp_path / "a.nii.gz")[0]).to(torch.float16)
    assert torch.equal(data, expected)


def test_zlib_and_isal_backends_agree(tmp_path):
    path = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(_data(np.float32), oblique_affine()), path)
    with gzip_fast.use_backend("zlib"):
        slow, _ = gio.read_image(path)
    fast, _ = gio.read_image(path)
    assert torch.equal(slow, fast)


def test_content_decides_compression_not_extension(tmp_path):
    img = nib.Nifti1Image(_data(np.int16), np.eye(4))
    (tmp_path / "plain.nii.gz").write_bytes(img.to_bytes())  # not actually compressed
    (tmp_path / "packed.nii").write_bytes(gzip.compress(img.to_bytes()))
    for name in ("plain.nii.gz", "packed.nii"):
        data, _ = gio.read_image(tmp_path / name)
        np.testing.assert_array_equal(data[0].numpy(), np.asanyarray(img.dataobj))


def test_multi_member_gzip(tmp_path):
    raw = nib.Nifti1Image(_data(np.int16), np.eye(4)).to_bytes()
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    data, _ = gio.read_image(tmp_path / "multi.nii.gz")
    np.testing.assert_array_equal(data[0].numpy(), _data(np.int16))
