"""Affine transforms and displacement fields exchanged with SimpleITK (ITK's and ANTs' file formats).

SimpleITK is the reference throughout: it reads what gpuprep writes, gpuprep reads what it writes,
and both map the same points (SimpleITK in LPS, gpuprep in RAS). Crafted and malformed files are
refused with an ImageReadError naming the file; refused writes leave nothing behind.
"""

from __future__ import annotations

import os
import re
import struct
import time
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import torch

from gpuprep.errors import ConfigError, ImageReadError, OutputExistsError, TransformError
from gpuprep.functional.resample import resample
from gpuprep.io.transform_files import (
    MAX_TRANSFORM_FILE_BYTES,
    read_affine,
    read_displacement_field,
    write_affine,
    write_displacement_field,
)
from tests.conftest import oblique_affine

sitk = pytest.importorskip("SimpleITK")

LPS = np.array([-1.0, -1.0, 1.0])
AFFINE_EXTENSIONS = [".tfm", ".txt", ".mat"]


def _random_matrix(seed: int) -> np.ndarray:
    """A fixed-to-moving RAS matrix: rotation, anisotropic scaling, shear and a translation."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(r))
    if np.linalg.det(rotation) < 0:
        rotation[:, 0] *= -1
    shear = np.eye(3)
    shear[0, 1], shear[0, 2], shear[1, 2] = rng.uniform(-0.2, 0.2, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag(rng.uniform(0.8, 1.25, 3)) @ shear
    matrix[:3, 3] = rng.uniform(-20.0, 20.0, 3)
    return matrix


def _points(seed: int, count: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-100.0, 100.0, (count, 3))


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _sitk_map(transform, points_ras: np.ndarray) -> np.ndarray:
    """SimpleITK's image of RAS points (converted to LPS and back)."""
    return np.array([transform.TransformPoint((p * LPS).tolist()) for p in points_ras]) * LPS


def _sitk_grid(volume: np.ndarray, affine: np.ndarray):
    """A SimpleITK image of ``volume`` ``[I, J, K]`` with the RAS voxel-to-world ``affine``."""
    image = sitk.GetImageFromArray(volume.transpose(2, 1, 0))  # SimpleITK arrays are (z, y, x)
    linear = affine[:3, :3] * LPS[:, None]
    spacing = np.linalg.norm(linear, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((linear / spacing).ravel().tolist())
    image.SetOrigin((affine[:3, 3] * LPS).tolist())
    return image


def _sitk_affine_file(tmp_path, ext: str, seed: int = 3):
    """An AffineTransform with a non-zero centre, written by SimpleITK; returns it and the file."""
    rng = np.random.default_rng(seed)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix((_random_matrix(seed)[:3, :3]).ravel().tolist())
    transform.SetTranslation(rng.uniform(-10, 10, 3).tolist())
    transform.SetCenter(rng.uniform(-50, 50, 3).tolist())
    path = tmp_path / f"sitk{ext}"
    sitk.WriteTransform(transform, str(path))
    return transform, path


# --- affine transforms --------------------------------------------------------------------------


@pytest.mark.parametrize("ext", AFFINE_EXTENSIONS)
def test_affine_round_trip_is_exact(tmp_path, ext):
    matrix = _random_matrix(0)
    path = write_affine(tmp_path / f"m{ext}", matrix)
    result = read_affine(path)
    assert result.dtype == np.float64 and result.shape == (4, 4)
    np.testing.assert_array_equal(result, matrix)


@pytest.mark.parametrize("ext", AFFINE_EXTENSIONS)
def test_simpleitk_reads_our_affine(tmp_path, ext):
    matrix = _random_matrix(1)
    path = write_affine(tmp_path / f"m{ext}", torch.from_numpy(matrix))
    transform = sitk.ReadTransform(str(path))
    points = _points(1)
    np.testing.assert_allclose(_sitk_map(transform, points), _apply(matrix, points), rtol=0, atol=1e-9)


@pytest.mark.parametrize("ext", AFFINE_EXTENSIONS)
def test_we_read_the_affine_simpleitk_writes_with_a_centre(tmp_path, ext):
    transform, path = _sitk_affine_file(tmp_path, ext)
    assert any(transform.GetFixedParameters())
    points = _points(2)
    np.testing.assert_allclose(_apply(read_affine(path), points), _sitk_map(transform, points), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["AffineTransform_float_3_3", "MatrixOffsetTransformBase_double_3_3",
                                  "MatrixOffsetTransformBase_float_3_3"])
def test_other_affine_type_names_read_like_simpleitk(tmp_path, name):
    _, path = _sitk_affine_file(tmp_path, ".tfm")
    path.write_text(path.read_text().replace("AffineTransform_double_3_3", name))
    points = _points(3)
    expected = _sitk_map(sitk.ReadTransform(str(path)), points)
    np.testing.assert_allclose(_apply(read_affine(path), points), expected, rtol=0, atol=1e-9)


def _mat_variable(order: str, kind: int, name: str, values, rows=None, cols=1) -> bytes:
    """A MATLAB v4 column vector as vnl_matlab_write lays it out (type 0/10, or 1000/1010 big-endian)."""
    encoded = name.encode() + b"\0"
    fmt = "d" if kind % 100 == 0 else "f"
    header = struct.pack(f"{order}5i", kind, len(values) if rows is None else rows, cols, 0, len(encoded))
    return header + encoded + struct.pack(f"{order}{len(values)}{fmt}", *values)


@pytest.mark.parametrize(("order", "kind"), [("<", 10), (">", 1000), (">", 1010)])
def test_float32_and_big_endian_mat_files_read_like_simpleitk(tmp_path, order, kind):
    transform, _ = _sitk_affine_file(tmp_path, ".mat")
    path = tmp_path / "ants.mat"
    path.write_bytes(_mat_variable(order, kind, "AffineTransform_float_3_3", transform.GetParameters())
                     + _mat_variable(order, kind, "fixed", transform.GetFixedParameters()))
    points = _points(4)
    expected = _sitk_map(sitk.ReadTransform(str(path)), points)
    np.testing.assert_allclose(_apply(read_affine(path), points), expected, rtol=0, atol=1e-9)


def test_our_mat_file_is_byte_for_byte_what_simpleitk_writes(tmp_path):
    matrix = _random_matrix(5)
    ours = write_affine(tmp_path / "ours.mat", matrix)
    sitk.WriteTransform(sitk.ReadTransform(str(ours)), str(tmp_path / "theirs.mat"))
    assert ours.read_bytes() == (tmp_path / "theirs.mat").read_bytes()


@pytest.mark.parametrize("ext", [".tfm", ".mat"])
def test_simpleitk_resampling_with_our_file_equals_gpuprep_resampling(tmp_path, ext):
    rng = np.random.default_rng(6)
    moving = rng.normal(size=(12, 11, 10)).astype(np.float32)
    moving_affine = oblique_affine(spacing=(1.3, 1.0, 1.6), angles=(0.2, -0.3, 0.4), origin=(-7.0, 5.0, -9.0))
    fixed_shape = (11, 9, 10)
    fixed_affine = oblique_affine(spacing=(1.1, 1.2, 0.9), angles=(-0.1, 0.25, -0.35), origin=(4.0, -6.0, 3.0))
    # Fixed centre to moving centre, with a rotation, scaling and shear between them.
    moving_centre = _apply(moving_affine, (np.array(moving.shape) - 1) / 2)
    fixed_centre = _apply(fixed_affine, (np.array(fixed_shape) - 1) / 2)
    matrix = _random_matrix(6)
    matrix[:3, 3] = moving_centre - matrix[:3, :3] @ fixed_centre
    path = write_affine(tmp_path / f"m{ext}", matrix)

    fixed_image = _sitk_grid(np.zeros(fixed_shape, dtype=np.float32), fixed_affine)
    theirs = sitk.Resample(_sitk_grid(moving, moving_affine), fixed_image, sitk.ReadTransform(str(path)),
                           sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    theirs_ijk = sitk.GetArrayFromImage(theirs).transpose(2, 1, 0)
    voxel_map = np.linalg.inv(moving_affine) @ matrix @ fixed_affine
    ours = resample(torch.from_numpy(moving)[None, None], voxel_map[None], fixed_shape, mode="linear")[0, 0]

    # Compare where both interpolate inside the moving grid (their border rules differ).
    index = np.stack(np.meshgrid(*(np.arange(n) for n in fixed_shape), indexing="ij"), axis=-1)
    source = _apply(voxel_map, index.reshape(-1, 3).astype(np.float64)).reshape(*fixed_shape, 3)
    inside = ((source >= 1e-6) & (source <= np.array(moving.shape) - 1 - 1e-6)).all(axis=-1)
    assert inside.mean() > 0.3, "the test grids barely overlap"
    scale = np.abs(moving).max()
    np.testing.assert_allclose(ours.numpy()[inside], theirs_ijk[inside], rtol=0, atol=1e-4 * scale)
    assert np.abs(theirs_ijk[inside]).max() > 0.1 * scale


# --- displacement fields --------------------------------------------------------------------------


def _field(shape=(5, 6, 7), seed=7, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=3.0, size=(3, *shape)).astype(dtype)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_field_round_trip(tmp_path, ext, dtype):
    field, affine = _field(dtype=dtype), oblique_affine()
    path = write_displacement_field(tmp_path / f"warp{ext}", torch.from_numpy(field), affine)
    header = nib.load(path).header
    assert header.get_data_shape() == (5, 6, 7, 1, 3) and int(header["intent_code"]) == 1007
    assert header.get_data_dtype() == dtype
    result, result_affine = read_displacement_field(path)
    assert result.dtype == torch.float32 and result.shape == (3, 5, 6, 7)
    np.testing.assert_array_equal(result.numpy(), field.astype(np.float32))
    np.testing.assert_allclose(result_affine, affine, rtol=0, atol=1e-4)


def test_simpleitk_reads_our_field_as_a_displacement_field_transform(tmp_path):
    field, affine = _field(), oblique_affine()
    path = write_displacement_field(tmp_path / "warp.nii.gz", field, affine)
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (5, 6, 7) and image.GetNumberOfComponentsPerPixel() == 3
    transform = sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))
    for index in [(0, 0, 0), (4, 5, 6), (2, 3, 1), (1, 4, 5), (3, 0, 6)]:
        point_lps = np.array(image.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose(point_lps * LPS, _apply(affine, np.array(index, dtype=float)), atol=1e-4)
        moved = np.array(transform.TransformPoint(point_lps.tolist()))
        np.testing.assert_allclose((moved - point_lps) * LPS, field[(slice(None), *index)], rtol=0, atol=1e-5)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_we_read_the_field_simpleitk_writes(tmp_path, ext):
    vectors_lps = np.random.default_rng(8).normal(size=(7, 6, 5, 3)).astype(np.float32)  # (z, y, x, component)
    image = sitk.GetImageFromArray(vectors_lps, isVector=True)
    image.SetSpacing((1.2, 0.8, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    a = 0.3
    image.SetDirection(np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]).ravel().tolist())
    path = tmp_path / f"sitk{ext}"
    sitk.WriteImage(image, str(path))
    field, affine = read_displacement_field(path)
    assert field.shape == (3, 5, 6, 7)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
    for index in [(0, 0, 0), (4, 5, 6), (2, 3, 1)]:
        point_ras = _apply(affine, np.array(index, dtype=float))
        np.testing.assert_allclose(point_ras * LPS, image.TransformIndexToPhysicalPoint(index), atol=1e-4)
        np.testing.assert_allclose(point_ras + field[(slice(None), *index)].numpy(),
                                   _sitk_map(transform, point_ras[None])[0], rtol=0, atol=1e-4)


# --- refused input -----------------------------------------------------------------------------------


def _first_parameter(text: str, value: str) -> str:
    return re.sub(r"^Parameters: \S+", f"Parameters: {value}", text, count=1, flags=re.MULTILINE)


def _tfm_text(tmp_path) -> str:
    return _sitk_affine_file(tmp_path, ".tfm")[1].read_text()


@pytest.mark.parametrize(("edit", "rule"), [
    (lambda t: t.replace("V1.0", "V2.0"), "first line is '#Insight Transform File V2.0'"),
    (lambda t: "", "first line is ''"),
    (lambda t: t.replace("Transform: AffineTransform_double_3_3", "Transform: Euler3DTransform_double_3_3"),
     "transform type is 'Euler3DTransform_double_3_3'"),
    (lambda t: t.replace("Parameters: ", "Parameters: 1 ", 1), "the file holds 13 and 3"),
    (lambda t: t.replace("FixedParameters: ", "FixedParameters: 1 "), "the file holds 12 and 4"),
    (lambda t: _first_parameter(t, "nan"), "'nan', which is not a decimal number"),
    (lambda t: _first_parameter(t, "1e999"), "non-finite parameters"),
    (lambda t: _first_parameter(t, "1_0"), "'1_0', which is not a decimal number"),
    (lambda t: t + "Transform: AffineTransform_double_3_3\n", "second 'Transform'"),
    (lambda t: t.replace("FixedParameters", "Fixed"), "expected 'Transform: ...'"),
    (lambda t: t.replace("FixedParameters: ", "#"), "no 'FixedParameters:' line"),
    (lambda t: t.replace("Transform 0", "Transform \u00e9"), "is not ASCII"),
])
def test_malformed_text_files_are_refused_naming_file_and_rule(tmp_path, edit, rule):
    path = tmp_path / "bad.tfm"
    path.write_bytes(edit(_tfm_text(tmp_path)).encode())
    with pytest.raises(ImageReadError, match=re.escape(str(path))) as caught:
        read_affine(path)
    assert rule in str(caught.value)


@pytest.mark.parametrize("ext", [".tfm", ".mat"])
def test_oversized_file_is_refused_fast_and_small(tmp_path, ext):
    path = tmp_path / f"big{ext}"
    with open(path, "wb") as stream:
        stream.write(b"#Insight Transform File V1.0\n")
        stream.truncate(64 * MAX_TRANSFORM_FILE_BYTES)  # sparse: takes no disk, and only the cap is read
    start = time.process_time()
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError, match=re.escape(f"{path}: the file holds more than "
                                                           f"{MAX_TRANSFORM_FILE_BYTES} bytes")):
            read_affine(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.process_time() - start < 1.0
    assert peak < 2 * MAX_TRANSFORM_FILE_BYTES


def _sitk_mat(tmp_path) -> bytes:
    return _sitk_affine_file(tmp_path, ".mat")[1].read_bytes()


def _mat_edits():
    head = 20 + len("AffineTransform_double_3_3") + 1 + 12 * 8  # where 'fixed' starts
    return [
        (lambda b: b.replace(b"fixed", b"fixxd"), "named 'fixxd'; expected 'fixed'"),
        (lambda b: b.replace(b"AffineTransform_double", b"Euler3DTransform_doubl"),
         "transform type is 'Euler3DTransform_doubl_3_3'"),
        (lambda b: b[:4] + struct.pack("<i", 11) + b[8:], "has shape 11 x 1; expected 12 x 1"),
        (lambda b: b[:8] + struct.pack("<i", 2) + b[12:], "has shape 12 x 2; expected 12 x 1"),
        (lambda b: b[:4] + struct.pack("<i", 2**31 - 1) + b[8:], "has shape 2147483647 x 1"),
        (lambda b: b[: head + 4] + struct.pack("<i", 4) + b[head + 8 :], "'fixed' has shape 4 x 1; expected 3 x 1"),
        (lambda b: struct.pack("<i", 20) + b[4:], "MATLAB v4 type 335544320"),
        (lambda b: b[:16] + struct.pack("<i", 10**6) + b[20:], "name length 1000000"),
        (lambda b: b[:-5], "truncated MATLAB v4 file: variable 'fixed' needs 24 bytes of values, 19 are left"),
        (lambda b: b[:head + 10], "truncated MATLAB v4 file: the variable at byte 143 needs a 20-byte header"),
        (lambda b: b + b"\0" * 8, "8 bytes follow the 'fixed' vector"),
        (lambda b: b[:-8] + struct.pack("<d", float("nan")), "non-finite parameters"),
        (lambda b: b"", "the variable at byte 0 needs a 20-byte header, 0 bytes are left"),
    ]


@pytest.mark.parametrize(("edit", "rule"), _mat_edits())
def test_malformed_mat_files_are_refused_naming_file_and_rule(tmp_path, edit, rule):
    path = tmp_path / "bad.mat"
    path.write_bytes(edit(_sitk_mat(tmp_path)))
    with pytest.raises(ImageReadError, match=re.escape(str(path))) as caught:
        read_affine(path)
    assert rule in str(caught.value)


def test_unknown_extensions_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown transform extension"):
        write_affine(tmp_path / "m.h5", np.eye(4))
    with pytest.raises(ImageReadError, match="unknown transform file type"):
        read_affine(tmp_path / "m.h5")
    with pytest.raises(FileNotFoundError, match=r"missing\.tfm"):
        read_affine(tmp_path / "missing.tfm")
    with pytest.raises(ConfigError, match=r"\.nii or \.nii\.gz"):
        write_displacement_field(tmp_path / "warp.nrrd", _field(), np.eye(4))
    with pytest.raises(ImageReadError, match=r"\.nii or \.nii\.gz"):
        read_displacement_field(tmp_path / "warp.nrrd")
    assert os.listdir(tmp_path) == []


def _bad_matrix(kind: str) -> np.ndarray:
    matrix = _random_matrix(9)
    if kind == "nan":
        matrix[1, 2] = np.nan
    elif kind == "last row":
        matrix[3, 0] = 0.5
    elif kind == "singular":
        matrix[:3, 2] = matrix[:3, 0]
    else:
        matrix = matrix[:3]
    return matrix


@pytest.mark.parametrize(("kind", "rule"), [("nan", "non-finite entries"), ("last row", "has last row [0.5, 0.0"),
                                            ("singular", "is singular"), ("3x4", "must be 4x4, got shape (3, 4)")])
@pytest.mark.parametrize("ext", [".tfm", ".mat"])
def test_bad_matrices_are_refused_and_nothing_is_written(tmp_path, kind, rule, ext):
    path = tmp_path / f"m{ext}"
    with pytest.raises(TransformError, match=re.escape(str(path))) as caught:
        write_affine(path, _bad_matrix(kind))
    assert rule in str(caught.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("name", "write"), [
    ("m.tfm", lambda p, overwrite: write_affine(p, _random_matrix(10), overwrite=overwrite)),
    ("m.mat", lambda p, overwrite: write_affine(p, _random_matrix(10), overwrite=overwrite)),
    ("warp.nii.gz", lambda p, overwrite: write_displacement_field(p, _field(), np.eye(4), overwrite=overwrite)),
])
def test_existing_output_is_replaced_only_with_overwrite(tmp_path, name, write):
    path = tmp_path / name
    path.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match=re.escape(f"{path}: the file exists; pass overwrite=True")):
        write(path, False)
    assert path.read_bytes() == b"keep me" and os.listdir(tmp_path) == [name]
    write(path, True)
    assert path.read_bytes() != b"keep me" and os.listdir(tmp_path) == [name]


@pytest.mark.parametrize(("field", "affine", "rule"), [
    (_field()[:2], np.eye(4), "[3, D, H, W] with no empty axis; got shape (2, 5, 6, 7)"),
    (np.zeros((3, 0, 2, 2), np.float32), np.eye(4), "got shape (3, 0, 2, 2)"),
    (np.zeros((3, 2, 2, 2), np.int16), np.eye(4), "floating point, got int16"),
    (np.full((3, 2, 2, 2), np.inf, np.float32), np.eye(4), "24 displacement values are not finite"),
    (_field(), np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), "has shear"),
    (_field(), np.diag([1.0, 1.0, 0.0, 1.0]), "the grid affine is singular"),
])
def test_bad_fields_are_refused_and_nothing_is_written(tmp_path, field, affine, rule):
    path = tmp_path / "warp.nii.gz"
    with pytest.raises(TransformError, match=re.escape(str(path))) as caught:
        write_displacement_field(path, field, affine)
    assert rule in str(caught.value)
    assert os.listdir(tmp_path) == []


def _nifti(tmp_path, data, intent="vector", name="bad.nii.gz"):
    image = nib.Nifti1Image(data, oblique_affine())
    image.header.set_intent(intent)
    path = tmp_path / name
    nib.save(image, path)
    return path


@pytest.mark.parametrize(("make", "rule"), [
    (lambda d: d[:, :, :, 0, :], "shape (X, Y, Z, 1, 3) (ITK's vector layout); the file has (5, 6, 7, 3)"),
    (lambda d: np.concatenate([d, d[..., :1]], axis=-1), "the file has (5, 6, 7, 1, 4)"),
])
def test_field_files_of_other_shapes_are_refused(tmp_path, make, rule):
    data = _field().transpose(1, 2, 3, 0)[:, :, :, None, :]
    path = _nifti(tmp_path, make(data))
    with pytest.raises(ImageReadError, match=re.escape(str(path))) as caught:
        read_displacement_field(path)
    assert rule in str(caught.value)


def test_field_file_without_vector_intent_is_refused(tmp_path):
    path = _nifti(tmp_path, _field().transpose(1, 2, 3, 0)[:, :, :, None, :], intent="none")
    rule = re.escape(f"{path}: a displacement field has intent code 1007") + ".*the file has 0"
    with pytest.raises(ImageReadError, match=rule):
        read_displacement_field(path)


def test_field_file_with_nan_is_refused(tmp_path):
    data = _field().transpose(1, 2, 3, 0)[:, :, :, None, :].copy()
    data[1, 2, 3, 0, 1] = np.nan
    path = _nifti(tmp_path, data)
    with pytest.raises(ImageReadError, match=re.escape(f"{path}: 1 displacement values are not finite")):
        read_displacement_field(path)


def test_field_header_declaring_huge_dims_is_refused_before_reading(tmp_path):
    path = _nifti(tmp_path, np.zeros((2, 2, 2, 1, 3), np.float32), name="bomb.nii")
    raw = bytearray(path.read_bytes())
    raw[40:56] = struct.pack("<8h", 5, 2000, 2000, 2000, 1, 3, 1, 1)  # dim[0..7]
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError, match=re.escape(str(path))):
        read_displacement_field(path)


def test_garbage_field_file_is_refused(tmp_path):
    path = tmp_path / "warp.nii"
    path.write_bytes(b"not a nifti file")
    with pytest.raises(ImageReadError, match=re.escape(f"{path}: not a valid NIfTI file")):
        read_displacement_field(path)
