"""DICOM series slice checks: missing slices, unequal spacing, echoes sharing a UID, single files.

Series are written slice by slice with SimpleITK (its DicomSeriesFromArray recipe) at known
positions; gpuprep's geometry is compared with those positions and with SimpleITK's own reading.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpuprep.io as gio
from gpuprep.errors import ConfigError, ImageReadError
from tests.conftest import file_digest

sitk = pytest.importorskip("SimpleITK")

UID = "1.2.826.0.1.3680043.2.1125.1.20240101.7"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # row, column direction cosines (LPS): slice normal +z


def _write_slices(folder, offsets, *, orientation=AXIAL, uid=UID, tags=None, prefix="im", seed=0, origin=(10, -20, 30)):
    """One 2D DICOM file per offset (mm along the slice normal); returns the slices [n, rows, cols]."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    slices = rng.integers(-1000, 2000, size=(len(offsets), 6, 5)).astype(np.int16)
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index, offset in enumerate(offsets):
        piece = sitk.GetImageFromArray(slices[index][None])[:, :, 0]
        piece.SetSpacing((0.7, 0.9))
        position = np.asarray(origin, dtype=float) + offset * normal
        piece.SetMetaData("0020|000e", uid)
        piece.SetMetaData("0020|0037", "\\".join(f"{v:.10g}" for v in orientation))
        piece.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
        piece.SetMetaData("0008|0060", "CT")
        piece.SetMetaData("0020|0013", str(index + 1))
        for tag, value in ((tags or {}).get(index) or {}).items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{index:03d}.dcm"))
        writer.Execute(piece)
    return slices


def _slice_positions_ras(affine: torch.Tensor, count: int) -> np.ndarray:
    """World position (LPS, as DICOM writes it) of voxel (0, 0, k) for every slice k."""
    ras = np.stack([affine.numpy() @ np.array([0.0, 0.0, k, 1.0]) for k in range(count)])[:, :3]
    return ras * np.array([-1.0, -1.0, 1.0])


def test_good_series_reads_with_the_written_spacing_and_positions(tmp_path, recwarn):
    offsets = [0.0, 2.5, 5.0, 7.5, 10.0]
    slices = _write_slices(tmp_path / "ct", offsets)
    data, meta = gio.read_image(tmp_path / "ct")
    np.testing.assert_array_equal(data[0].numpy(), slices.transpose(2, 1, 0))
    expected = np.array([10.0, -20.0, 30.0]) + np.outer(offsets, [0, 0, 1])
    np.testing.assert_allclose(_slice_positions_ras(meta["affine"], len(offsets)), expected, atol=1e-6)
    assert not [w for w in recwarn if "DICOM" in str(w.message)]


def test_dicom_series_with_missing_slice_is_refused_naming_folder_and_positions(tmp_path):
    folder = tmp_path / "head"
    _write_slices(folder, [0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0])
    (folder / "im003.dcm").unlink()
    digest = file_digest(folder / "im002.dcm")
    with pytest.raises(ImageReadError, match=rf"{folder}: DICOM series {UID} \(6 files\): missing slices: 1 slice "
                                             r"missing between slice positions 35 and 40 mm \(files im002.dcm, "
                                             r"im004.dcm\) where the spacing is 2.5 mm.*dicom_check='warn'"):
        gio.read_image(folder)
    assert file_digest(folder / "im002.dcm") == digest


def test_dicom_warn_reports_how_far_simpleitk_puts_the_slices(tmp_path):
    """Under dicom_check='warn' the series is read as ITK stacks it, and the warning's 'up to X mm
    off' is the real displacement of SimpleITK's own slices from the written positions."""
    folder = tmp_path / "head"
    offsets = [0.0, 2.5, 5.0, 10.0, 12.5, 15.0]  # one slice missing: ITK averages the spacing to 3 mm
    _write_slices(folder, offsets)
    with pytest.warns(UserWarning, match=r"missing slices.*slices would land up to ([0-9.]+) mm off") as record:
        data, meta = gio.read_image(folder, dicom_check="warn")
    reported = float(str(record[0].message).split("land up to ")[1].split(" mm")[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    itk = reader.Execute()
    placed = np.array([itk.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(len(offsets))])
    actual = np.abs(placed[:, 2] - (30 + np.array(offsets))).max()
    assert actual > 0.5  # the bug this check exists for
    assert reported == pytest.approx(actual, abs=1e-3)
    np.testing.assert_allclose(_slice_positions_ras(meta["affine"], len(offsets)), placed, atol=1e-6)
    assert data.shape[-1] == len(offsets)


def test_dicom_series_with_unequal_slice_spacing_is_refused(tmp_path):
    folder = tmp_path / "ct"
    _write_slices(folder, [0.0, 2.0, 4.0, 6.0, 8.7, 10.7])  # one 2.7 mm gap: not a multiple of 2 mm
    with pytest.raises(ImageReadError, match=rf"{folder}: .*unequal slice spacing: typical gap 2 mm, but 2.7 mm "
                                             r"between 36 and 38.7 mm \(im003.dcm, im004.dcm\)"):
        gio.read_image(folder)


def test_dicom_gap_within_dcm2niix_tolerance_is_accepted(tmp_path):
    """Rounded positions (a 0.05 mm wobble in 5 mm slices) are within min(0.2 mm, 10 %)."""
    _write_slices(tmp_path / "ct", [0.0, 5.0, 10.05, 15.0, 20.0])
    data, _ = gio.read_image(tmp_path / "ct")
    assert data.shape[-1] == 5


def test_dicom_two_echoes_sharing_a_series_uid_are_refused(tmp_path):
    folder = tmp_path / "mr"
    offsets = [0.0, 3.0, 6.0, 9.0]
    echo = {i: {"0018|0086": "1", "0018|0081": "10"} for i in range(4)}
    _write_slices(folder, offsets, tags=echo, prefix="e1_")
    echo = {i: {"0018|0086": "2", "0018|0081": "30"} for i in range(4)}
    _write_slices(folder, offsets, tags=echo, prefix="e2_", seed=1)
    with pytest.raises(ImageReadError, match=rf"{folder}: DICOM series {UID} \(8 files\): 4 slice positions are each "
                                             r"held by several files: several echoes or acquisitions share one Series "
                                             r"Instance UID \(echo numbers \['1', '2'\], echo times \['10', '30'\]\); "
                                             r"at 30 mm \(e1_000.dcm, e2_000.dcm\), 33 mm"):
        gio.read_image(folder)


def test_dicom_slices_with_two_orientations_are_refused(tmp_path):
    folder = tmp_path / "mixed"
    _write_slices(folder, [0.0, 2.0, 4.0])
    tilted = (1.0, 0.0, 0.0, 0.0, np.cos(0.2), np.sin(0.2))
    _write_slices(folder, [6.0, 8.0], orientation=tilted, prefix="t", seed=2)
    with pytest.raises(ImageReadError, match=rf"{folder}: .*the slices have 2 orientations \(0020,0037\)"):
        gio.read_image(folder)


def test_dicom_gantry_tilt_is_read_with_a_sheared_affine_through_every_slice_position(tmp_path):
    """Each slice 0.5 mm further along y (a tilted gantry): ITK stacks them along the normal and
    misplaces all but the first; gpuprep's affine goes through every written position."""
    folder = tmp_path / "tilt"
    offsets = [0.0, 2.0, 4.0, 6.0]
    for index, z in enumerate(offsets):
        _write_slices(folder, [z], origin=(10, -20 + 0.5 * index, 30), prefix=f"s{index}_", seed=index)
    data, meta = gio.read_image(folder)
    assert data.shape[-1] == len(offsets)
    written = np.array([[10, -20 + 0.5 * k, 30 + z] for k, z in enumerate(offsets)])
    np.testing.assert_allclose(_slice_positions_ras(meta["affine"], len(offsets)), written, atol=1e-6)
    corner = meta["affine"].numpy() @ np.array([4.0, 5.0, 3.0, 1.0])  # in-plane steps 0.7, 0.9 mm
    np.testing.assert_allclose(corner[:3] * [-1, -1, 1], written[3] + [4 * 0.7, 5 * 0.9, 0], atol=1e-6)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    itk_last = np.array(reader.Execute().TransformIndexToPhysicalPoint((0, 0, 3)))
    assert np.abs(itk_last - written[3]).max() > 1.0  # what plain ITK does


def test_dicom_slice_positions_off_one_line_are_refused(tmp_path):
    folder = tmp_path / "bent"
    for index, (z, y) in enumerate([(0.0, 0.0), (2.0, 1.0), (4.0, 1.0), (6.0, 0.0)]):
        _write_slices(folder, [z], origin=(10, -20 + y, 30), prefix=f"s{index}_", seed=index)
    with pytest.raises(ImageReadError, match=rf"{folder}: .*do not lie on one line: they stray up to"):
        gio.read_image(folder)


def test_single_dcm_path_reads_its_whole_series(tmp_path):
    """A single file reads the files of its series in its folder (as ITK-SNAP and 3D Slicer do), and
    only those: another series in the same folder is left out."""
    folder = tmp_path / "study"
    offsets = [0.0, 1.5, 3.0, 4.5]
    slices = _write_slices(folder, offsets)
    scout = {i: {"0008|103e": "scout"} for i in range(2)}
    _write_slices(folder, [0.0, 4.0], uid=UID + ".9", prefix="other", seed=5, tags=scout)
    data, meta = gio.read_image(folder / "im002.dcm")
    np.testing.assert_array_equal(data[0].numpy(), slices.transpose(2, 1, 0))
    expected = np.array([10.0, -20.0, 30.0]) + np.outer(offsets, [0, 0, 1])
    np.testing.assert_allclose(_slice_positions_ras(meta["affine"], len(offsets)), expected, atol=1e-6)
    assert meta["filename"] == str(folder / "im002.dcm")
    other, _ = gio.read_image(folder / "other001.dcm")
    assert other.shape[-1] == 2
    with pytest.raises(ImageReadError, match=rf"{folder}: the folder holds 2 DICOM series: {UID} \(4 files\), "
                                             rf"{UID}.9 \(2 files, 'scout'\).*or read one of its files"):
        gio.read_image(folder)


def test_single_dcm_path_of_a_bad_series_is_checked_too(tmp_path):
    folder = tmp_path / "head"
    _write_slices(folder, [0.0, 2.5, 7.5, 10.0])
    with pytest.raises(ImageReadError, match=r"missing slices"):
        gio.read_image(folder / "im000.dcm")


def test_dicom_check_argument_is_validated(tmp_path):
    _write_slices(tmp_path / "ct", [0.0, 1.0])
    with pytest.raises(ConfigError, match=r"read_image: dicom_check must be one of \('error', 'warn'\), got 'ignore'"):
        gio.read_image(tmp_path / "ct", dicom_check="ignore")


def test_load_image_passes_dicom_check(tmp_path):
    import gpuprep as gp

    _write_slices(tmp_path / "ct", [0.0, 2.0, 6.0, 8.0])
    with pytest.raises(ImageReadError, match=r"missing slices"):
        gp.LoadImage("ct")({"ct": str(tmp_path / "ct")})
    with pytest.warns(UserWarning, match=r"missing slices"):
        sample = gp.LoadImage("ct", dicom_check="warn")({"ct": str(tmp_path / "ct")})
    assert sample["ct"].shape[-1] == 4
    with pytest.raises(ConfigError, match=r"LoadImage: dicom_check must be one of"):
        gp.LoadImage("ct", dicom_check=False)


def test_dicom_slices_without_image_position_are_refused():
    from pathlib import Path

    from gpuprep.io.dicom import SliceHeader, slice_problems

    located = {"position": "0\\0\\0", "orientation": "\\".join(map(str, AXIAL))}
    headers = [SliceHeader(Path("a.dcm"), located), SliceHeader(Path("b.dcm"), {"orientation": located["orientation"]})]
    assert slice_problems(headers) == [
        "1 of 2 files lack Image Position/Orientation (Patient) (0020,0032/0037): b.dcm"
    ]
