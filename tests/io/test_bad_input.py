"""Bad input files give a clear error naming the file and the problem, and are never changed."""

from __future__ import annotations

import builtins
import gzip
import re
import struct

import nibabel as nib
import numpy as np
import pytest

import gpuprep.io as gio
from gpuprep.errors import ConfigError, ImageReadError
from tests.conftest import file_digest

# Offsets in the NIfTI-1 header (little endian as nibabel writes it here).
_DIM = 40
_SROW = {"x": 280, "y": 296, "z": 312}


def _good_bytes(shape=(8, 9, 10), dtype=np.int16) -> bytes:
    data = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    return nib.Nifti1Image(data, np.diag([1.0, 2.0, 3.0, 1.0]), dtype=dtype).to_bytes()


def _patched(raw: bytes, offset: int, fmt: str, *values) -> bytes:
    patched = bytearray(raw)
    struct.pack_into(fmt, patched, offset, *values)
    return bytes(patched)


def _assert_refused(path, match, error=ImageReadError, **kwargs):
    """``read_image`` raises ``error`` naming the file, and the file is unchanged."""
    digest = file_digest(path)
    with pytest.raises(error) as info:
        gio.read_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    assert re.search(match, message), message
    assert file_digest(path) == digest
    return message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(FileNotFoundError, match=r"nope\.nii\.gz"):
        gio.read_image(path)


def test_text_file_named_nii(tmp_path):
    path = tmp_path / "notes.nii"
    path.write_text("this is not an image, just some text that is long enough\n" * 20)
    _assert_refused(path, "not a NIfTI file")


def test_text_file_named_nii_gz(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"hello world, definitely not NIfTI" * 20))
    _assert_refused(path, "not a NIfTI file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nii"
    path.write_bytes(b"")
    _assert_refused(path, "only 0 bytes")


def test_unknown_extension(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    _assert_refused(path, r"unknown image type.*\.png.*supported: \.nii\.gz")


def test_truncated_gzip(tmp_path):
    path = tmp_path / "cut.nii.gz"
    packed = gzip.compress(_good_bytes())
    path.write_bytes(packed[: len(packed) // 2])
    _assert_refused(path, "truncated gzip")


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "flipped.nii.gz"
    packed = bytearray(gzip.compress(_good_bytes()))
    middle = len(packed) // 2
    packed[middle : middle + 8] = bytes(b ^ 0xFF for b in packed[middle : middle + 8])
    path.write_bytes(bytes(packed))
    _assert_refused(path, "corrupt gzip")


def test_bad_gzip_checksum(tmp_path):
    path = tmp_path / "crc.nii.gz"
    packed = bytearray(gzip.compress(_good_bytes()))
    packed[-8] ^= 0xFF  # first byte of the CRC-32 in the trailer
    path.write_bytes(bytes(packed))
    _assert_refused(path, "corrupt gzip")


def test_garbage_after_gzip_stream(tmp_path):
    path = tmp_path / "tail.nii.gz"
    path.write_bytes(gzip.compress(_good_bytes()) + b"garbage!")
    _assert_refused(path, "garbage after")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_truncated_voxel_data(tmp_path, ext):
    path = tmp_path / f"short{ext}"
    raw = _good_bytes()[:-100]
    path.write_bytes(gzip.compress(raw) if ext.endswith(".gz") else raw)
    _assert_refused(path, "truncated image data")


def test_zero_sized_dimension(tmp_path):
    path = tmp_path / "zero.nii"
    path.write_bytes(_patched(_good_bytes(), _DIM + 2 * 2, "<h", 0))  # dim[2] = 0
    _assert_refused(path, r"zero-sized dimension.*\(8, 0, 10\)")


def test_nan_voxels_error_by_default(tmp_path):
    data = np.ones((8, 8, 8), np.float32)
    data[1, 2, 3] = np.nan
    data[4, 5, 6] = np.inf
    data[0, 0, 0] = -np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    _assert_refused(path, r"3 of 512 voxels are not finite.*nonfinite='zero'")


def test_nan_voxels_replaced_with_zero(tmp_path):
    data = np.ones((8, 8, 8), np.float32)
    data[1, 2, 3] = np.nan
    data[4, 5, 6] = -np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    digest = file_digest(path)
    with pytest.warns(UserWarning, match=r"nan\.nii\.gz: replaced 2 non-finite"):
        loaded, meta = gio.read_image(path, nonfinite="zero")
    expected = np.nan_to_num(data, nan=0.0, neginf=0.0)
    np.testing.assert_array_equal(loaded[0].numpy(), expected)
    assert meta["nonfinite_replaced"] == 2
    assert file_digest(path) == digest


def test_nan_voxels_kept_on_request(tmp_path):
    data = np.ones((8, 8, 8), np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    loaded, meta = gio.read_image(tmp_path / "nan.nii", nonfinite="keep")
    assert np.isnan(loaded[0, 1, 2, 3].item())
    assert meta["nonfinite_replaced"] == 0


def test_invalid_nonfinite_argument(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), tmp_path / "a.nii")
    with pytest.raises(ConfigError, match=r"nonfinite must be one of.*'ignore'"):
        gio.read_image(tmp_path / "a.nii", nonfinite="ignore")


def test_invalid_dtype_argument(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), tmp_path / "a.nii")
    with pytest.raises(ConfigError, match=r"dtype.*'floaty'"):
        gio.read_image(tmp_path / "a.nii", dtype="floaty")


def test_singular_affine(tmp_path):
    path = tmp_path / "singular.nii"
    path.write_bytes(_patched(_good_bytes(), _SROW["y"], "<4f", 0.0, 0.0, 0.0, 5.0))
    _assert_refused(path, "affine is singular")


def test_non_finite_affine(tmp_path):
    path = tmp_path / "nanaffine.nii"
    path.write_bytes(_patched(_good_bytes(), _SROW["x"], "<f", float("nan")))
    _assert_refused(path, "affine is not finite")


def test_2d_image(tmp_path):
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 9), np.int16), np.eye(4)), path)
    _assert_refused(path, r"2D \(shape \(8, 9\)\).*3D volumes")


def test_complex_voxels(tmp_path):
    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.complex64), np.eye(4)), path)
    _assert_refused(path, "complex")


def test_rgb_voxels(tmp_path):
    rgb = np.zeros((4, 5, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "rgb.nii"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    _assert_refused(path, "unsupported voxel type")


def test_not_an_mgh_file(tmp_path):
    path = tmp_path / "bad.mgz"
    path.write_bytes(gzip.compress(b"\0\0\0\x07" + b"\0" * 400))
    _assert_refused(path, r"not an MGH file.*version field is 7")


def test_input_files_are_only_opened_for_reading(tmp_path, monkeypatch):
    paths = []
    for name in ("a.nii", "b.nii.gz", "c.mgz"):
        image = nib.MGHImage if name.endswith("mgz") else nib.Nifti1Image
        nib.save(image(np.ones((4, 5, 6), np.float32), np.eye(4)), tmp_path / name)
        paths.append(tmp_path / name)
    real_open = builtins.open
    modes = []

    def spy(file, mode="r", *args, **kwargs):
        modes.append(mode)
        assert not set(mode) & set("wax+"), f"{file} opened with mode {mode!r}"
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    digests = [file_digest(p) for p in paths]
    for path in paths:
        gio.read_image(path)
    assert modes  # the spy saw the reads
    assert [file_digest(p) for p in paths] == digests
