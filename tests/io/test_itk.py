"""NRRD, MetaImage and DICOM through SimpleITK, checked against SimpleITK's own geometry."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import gpuprep.io as gio
from gpuprep.errors import ImageReadError, MissingDependencyError
from tests.conftest import file_digest

sitk = pytest.importorskip("SimpleITK")


def _itk_image(shape_zyx=(7, 8, 9), dtype=np.int16, oblique=True, components=0, seed=0):
    rng = np.random.default_rng(seed)
    shape = (*shape_zyx, components) if components else shape_zyx
    array = (rng.normal(size=shape) * 100).astype(dtype)
    image = sitk.GetImageFromArray(array, isVector=bool(components))
    image.SetSpacing((0.8, 1.1, 2.5))
    image.SetOrigin((12.0, -30.5, 41.25))
    if oblique:
        a, b = 0.3, -0.2
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
        image.SetDirection((rz @ ry).ravel().tolist())
    return image


def _expected(image) -> tuple[np.ndarray, np.ndarray]:
    """Data [C, I, J, K] and RAS voxel positions computed by SimpleITK itself."""
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        data = array.transpose(3, 2, 1, 0)
    else:
        data = array.transpose(2, 1, 0)[None]
    return data, array


def _assert_geometry(affine: torch.Tensor, image) -> None:
    """Every corner and a middle voxel land where SimpleITK puts them (LPS -> RAS)."""
    size = image.GetSize()
    indices = [(i, j, k) for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    indices.append(tuple(s // 2 for s in size[:3]))
    for index in indices:
        x, y, z = image.TransformIndexToPhysicalPoint(index)
        ras = affine.numpy() @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], [-x, -y, z], rtol=0, atol=1e-9)


@pytest.mark.parametrize("ext", [".nrrd", ".nhdr", ".mha", ".mhd"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_read_matches_simpleitk(tmp_path, ext, dtype):
    image = _itk_image(dtype=dtype)
    path = tmp_path / f"img{ext}"
    sitk.WriteImage(image, str(path))
    data, meta = gio.read_image(path)
    expected, _ = _expected(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(data.numpy(), expected)
    assert data.dtype == torch.from_numpy(np.zeros(1, dtype)).dtype
    _assert_geometry(meta["affine"], sitk.ReadImage(str(path)))
    assert meta["format"] == {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mhd"}[ext]


def test_vector_image_components_become_channels(tmp_path):
    image = _itk_image(dtype=np.float32, components=3)
    sitk.WriteImage(image, str(tmp_path / "vec.mha"))
    data, _ = gio.read_image(tmp_path / "vec.mha")
    expected, _ = _expected(image)
    assert tuple(data.shape) == (3, *image.GetSize())
    np.testing.assert_array_equal(data.numpy(), expected)


def test_4d_image_time_becomes_channels(tmp_path):
    frames = [_itk_image(seed=s, oblique=False) for s in range(3)]
    series = sitk.JoinSeries(frames)
    sitk.WriteImage(series, str(tmp_path / "t.nrrd"))
    data, meta = gio.read_image(tmp_path / "t.nrrd")
    assert tuple(data.shape) == (3, *frames[0].GetSize())
    for channel, frame in enumerate(frames):
        np.testing.assert_array_equal(data[channel].numpy(), sitk.GetArrayFromImage(frame).transpose(2, 1, 0))
    _assert_geometry(meta["affine"], frames[0])


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
@pytest.mark.parametrize("channels", [1, 2])
def test_write_read_roundtrip(tmp_path, ext, channels):
    source = tmp_path / f"src{ext}"
    sitk.WriteImage(_itk_image(dtype=np.float32, components=channels if channels > 1 else 0), str(source))
    data, meta = gio.read_image(source)
    out = gio.write_image(tmp_path / f"out{ext}", data, meta["affine"], sidecar=False)
    again, meta_again = gio.read_image(out)
    assert torch.equal(again, data)
    np.testing.assert_allclose(meta_again["affine"].numpy(), meta["affine"].numpy(), rtol=0, atol=1e-12)
    _assert_geometry(meta_again["affine"], sitk.ReadImage(str(source)))


def test_write_nrrd_is_read_correctly_by_simpleitk(tmp_path):
    """An independent reader sees the data and world positions gpuprep meant to write."""
    from tests.conftest import oblique_affine

    data = torch.arange(5 * 6 * 7, dtype=torch.int16).reshape(1, 5, 6, 7)
    affine = torch.from_numpy(oblique_affine())
    gio.write_image(tmp_path / "x.nrrd", data, affine, sidecar=False, compresslevel=0)
    image = sitk.ReadImage(str(tmp_path / "x.nrrd"))
    assert image.GetSize() == (5, 6, 7)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), data[0].numpy())
    _assert_geometry(affine, image)


def _write_dicom_series(image, folder, series_uid="1.2.826.0.1.3680043.2.1125.1.20240101.1", prefix="slice"):
    """Write ``image`` as a DICOM series slice by slice (SimpleITK's DicomSeriesFromArray recipe)."""
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(str(v) for v in (direction[0], direction[3], direction[6],
                                             direction[1], direction[4], direction[7]))
    for index in range(image.GetDepth()):
        piece = image[:, :, index]
        piece.SetMetaData("0020|000e", series_uid)
        piece.SetMetaData("0020|0037", orientation)
        piece.SetMetaData("0008|0060", "CT")
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        piece.SetMetaData("0020|0032", "\\".join(str(v) for v in position))
        piece.SetMetaData("0020|0013", str(index))
        writer.SetFileName(str(folder / f"{prefix}{index:03d}.dcm"))
        writer.Execute(piece)


def test_dicom_series_folder(tmp_path):
    image = _itk_image(dtype=np.int16)
    _write_dicom_series(image, tmp_path / "series")
    data, meta = gio.read_image(tmp_path / "series")
    expected, _ = _expected(image)
    np.testing.assert_array_equal(data.numpy(), expected)
    assert data.dtype == torch.int16
    assert meta["format"] == "dicom"
    # Geometry against the written volume, and against SimpleITK's reading of the series.
    _assert_geometry(meta["affine"], image)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    _assert_geometry(meta["affine"], reader.Execute())


def test_single_dicom_file_reads_its_series(tmp_path):
    """A .dcm path reads its whole series (it used to read that one slice; see tests/io/test_dicom.py)."""
    image = _itk_image(dtype=np.int16)
    _write_dicom_series(image, tmp_path / "series")
    data, meta = gio.read_image(tmp_path / "series" / "slice002.dcm")
    expected, _ = _expected(image)
    np.testing.assert_array_equal(data.numpy(), expected)
    _assert_geometry(meta["affine"], image)


def test_dicom_file_without_extension_is_recognised(tmp_path):
    image = _itk_image(dtype=np.int16)
    _write_dicom_series(image, tmp_path / "series")
    renamed = tmp_path / "IM0001"
    renamed.write_bytes((tmp_path / "series" / "slice000.dcm").read_bytes())
    _, meta = gio.read_image(renamed)
    assert meta["format"] == "dicom"


def test_folder_with_two_series_is_refused(tmp_path):
    _write_dicom_series(_itk_image(), tmp_path / "a")
    other_uid = "1.2.826.0.1.3680043.2.1125.1.20240101.2"
    _write_dicom_series(_itk_image(seed=1), tmp_path / "a", other_uid, "other")
    with pytest.raises(ImageReadError, match="2 DICOM series"):
        gio.read_image(tmp_path / "a")


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no DICOM series"):
        gio.read_image(tmp_path / "empty")


def test_2d_itk_image_is_refused(tmp_path):
    path = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.int16)), str(path))
    digest = file_digest(path)
    with pytest.raises(ImageReadError, match=r"flat\.nrrd.*2D"):
        gio.read_image(path)
    assert file_digest(path) == digest


def test_corrupt_nrrd_is_refused(tmp_path):
    path = tmp_path / "bad.nrrd"
    path.write_text("NRRD0004\ntype: short\ndimension: banana\n\n")
    digest = file_digest(path)
    with pytest.raises(ImageReadError, match=r"bad\.nrrd"):
        gio.read_image(path)
    assert file_digest(path) == digest


def test_without_simpleitk(tmp_path, monkeypatch):
    path = tmp_path / "img.nrrd"
    sitk.WriteImage(_itk_image(), str(path))
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # makes `import SimpleITK` fail
    with pytest.raises(MissingDependencyError, match=r'img\.nrrd.*pip install "gpuprep\[io\]"'):
        gio.read_image(path)
    with pytest.raises(MissingDependencyError, match=r"out\.mha.*gpuprep\[io\]"):
        gio.write_image(tmp_path / "out.mha", torch.zeros(1, 2, 2, 2), torch.eye(4), sidecar=False)
    assert not (tmp_path / "out.mha").exists()
