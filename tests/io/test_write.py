"""write_image: header fields, argument checks and atomic writes."""

from __future__ import annotations

import gzip
import pathlib

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep.io as gio
from gpuprep.errors import ConfigError, ImageWriteError, TransformError
from gpuprep.io import gzip_fast
from tests.conftest import file_digest, oblique_affine


def _data(dtype=torch.float32) -> torch.Tensor:
    return (torch.arange(6 * 7 * 8).reshape(1, 6, 7, 8) % 50).to(dtype)


def test_nifti_header_defaults(tmp_path):
    affine = oblique_affine()
    path = gio.write_image(tmp_path / "x.nii.gz", _data(), affine, sidecar=False)
    img = nib.load(path)
    assert int(img.header["sform_code"]) == gio.writer.DEFAULT_SFORM_CODE == 2
    assert int(img.header["qform_code"]) == gio.writer.DEFAULT_QFORM_CODE == 1
    assert img.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(img.affine, affine, rtol=0, atol=1e-5)  # float32 sform
    np.testing.assert_allclose(img.get_qform(), affine, rtol=0, atol=1e-4)  # rigid + zooms: representable
    assert img.get_data_dtype() == np.float32
    assert np.isnan(img.header["scl_slope"]) or img.header["scl_slope"] in (0, 1)


@pytest.mark.parametrize(("qform", "sform"), [(0, 1), (1, 4), ("scanner", "mni"), (2, "template")])
def test_nifti_codes_as_given(tmp_path, qform, sform):
    path = gio.write_image(tmp_path / "x.nii", _data(), np.eye(4), qform_code=qform, sform_code=sform)
    codes = nib.nifti1.xform_codes
    assert int(nib.load(path).header["qform_code"]) == codes.code[qform]
    assert int(nib.load(path).header["sform_code"]) == codes.code[sform]


def test_sheared_affine_is_exact_in_sform(tmp_path):
    affine = np.array([[1.0, 0.25, 0.0, 3.0], [0.0, 1.0, 0.0, 4.0], [0.0, 0.0, 2.0, 5.0], [0, 0, 0, 1]])
    path = gio.write_image(tmp_path / "shear.nii.gz", _data(), affine, sidecar=False)
    _, meta = gio.read_image(path)
    np.testing.assert_array_equal(meta["affine"].numpy(), affine)


def test_nifti2_float64_affine(tmp_path):
    path = gio.write_image(tmp_path / "x.nii.gz", _data(), oblique_affine(), nifti_version=2, sidecar=False)
    assert isinstance(nib.load(path), nib.Nifti2Image)
    np.testing.assert_array_equal(nib.load(path).affine, oblique_affine())


def test_multichannel_is_written_channels_last(tmp_path):
    data = torch.rand(3, 4, 5, 6)
    path = gio.write_image(tmp_path / "x.nii.gz", data, np.eye(4), sidecar=False)
    on_disk = np.asanyarray(nib.load(path).dataobj)
    assert on_disk.shape == (4, 5, 6, 3)
    np.testing.assert_array_equal(on_disk, data.permute(1, 2, 3, 0).numpy())


def test_write_from_device(tmp_path, device):
    data = _data().to(device)
    path = gio.write_image(tmp_path / "x.nii.gz", data, torch.eye(4, dtype=torch.float64), sidecar=False)
    np.testing.assert_array_equal(np.asanyarray(nib.load(path).dataobj), data[0].cpu().numpy())


def test_gzip_backends_write_readable_files(tmp_path):
    with gzip_fast.use_backend("zlib"):
        slow = gio.write_image(tmp_path / "slow.nii.gz", _data(), np.eye(4), sidecar=False, compresslevel=6)
    fast = gio.write_image(tmp_path / "fast.nii.gz", _data(), np.eye(4), sidecar=False)
    assert gzip.decompress(slow.read_bytes()) == gzip.decompress(fast.read_bytes())


def test_compresslevel_zero_is_still_gzip(tmp_path):
    path = gio.write_image(tmp_path / "x.nii.gz", _data(), np.eye(4), sidecar=False, compresslevel=0)
    assert path.read_bytes()[:2] == b"\x1f\x8b"


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(ImageWriteError, match="does not exist"):
        gio.write_image(tmp_path / "no" / "such" / "x.nii.gz", _data(), np.eye(4))
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"path": "x.png"}, r"x\.png: unknown output extension"),
        ({"nifti_version": 3}, "nifti_version must be 1 or 2, got 3"),
        ({"compresslevel": 12}, "compresslevel must be an integer from 0 to 9, got 12"),
        ({"sform_code": 0}, "sform_code must be 1-5"),
        ({"qform_code": "banana"}, "qform_code must be 0-5.*'banana'"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    path = tmp_path / kwargs.pop("path", "x.nii.gz")
    with pytest.raises(ConfigError, match=match):
        gio.write_image(path, _data(), np.eye(4), **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "affine", "match"),
    [
        (torch.zeros(4, 5, 6), np.eye(4), r"\[C, D, H, W\].*\(4, 5, 6\)"),
        (torch.zeros(1, 0, 5, 6), np.eye(4), r"no empty axis.*\(1, 0, 5, 6\)"),
        (torch.zeros(1, 4, 5, 6, dtype=torch.complex64), np.eye(4), "complex"),
        (torch.zeros(1, 4, 5, 6), np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
        (torch.zeros(1, 4, 5, 6), np.full((4, 4), np.nan), "finite 4x4"),
        (torch.zeros(1, 4, 5, 6), np.eye(3), "finite 4x4"),
    ],
)
def test_bad_data_or_affine(tmp_path, data, affine, match):
    with pytest.raises(TransformError, match=rf"x\.nii\.gz.*{match}"):
        gio.write_image(tmp_path / "x.nii.gz", data, affine)
    assert list(tmp_path.iterdir()) == []


def test_mgh_refuses_lossy_dtypes(tmp_path):
    with pytest.raises(TransformError, match=r"x\.mgz.*MGH stores float32 at most, got float64"):
        gio.write_image(tmp_path / "x.mgz", _data(torch.float64), np.eye(4))
    big = _data(torch.int64) * 2**40
    with pytest.raises(TransformError, match=r"MGH stores at most int32.*int64 values span \[0, "):
        gio.write_image(tmp_path / "x.mgz", big, np.eye(4))
    assert list(tmp_path.iterdir()) == []


# -- atomic writes -----------------------------------------------------------------------------


def _failing_write_bytes(monkeypatch):
    """Make every ``Path.write_bytes`` write half its data, then fail like a full disk."""

    def write_half(self, data):
        with open(self, "wb") as stream:
            stream.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_half)


@pytest.mark.parametrize("name", ["x.nii.gz", "x.nii", "x.mgz"])
def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, name):
    _failing_write_bytes(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        gio.write_image(tmp_path / name, _data(), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_existing_target(tmp_path, monkeypatch):
    target = gio.write_image(tmp_path / "x.nii.gz", _data(), np.eye(4))
    before = {p.name: file_digest(p) for p in tmp_path.iterdir()}
    _failing_write_bytes(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        gio.write_image(target, _data() + 1, np.eye(4))
    assert {p.name: file_digest(p) for p in tmp_path.iterdir()} == before


def test_failed_itk_write_leaves_nothing(tmp_path, monkeypatch):
    sitk = pytest.importorskip("SimpleITK")
    target = gio.write_image(tmp_path / "x.nrrd", _data(), np.eye(4), sidecar=False)
    digest = file_digest(target)

    def write_half(image, name, *args):
        pathlib.Path(name).write_text("NRRD0004\npartial")
        raise RuntimeError("ITK ERROR: disk full")

    monkeypatch.setattr(sitk, "WriteImage", write_half)
    with pytest.raises(ImageWriteError, match=r"x\.nrrd.*disk full"):
        gio.write_image(target, _data() + 1, np.eye(4), sidecar=False)
    assert [p.name for p in tmp_path.iterdir()] == ["x.nrrd"]
    assert file_digest(target) == digest
