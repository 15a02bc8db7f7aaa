"""Crafted image files are refused fast and small with an ImageReadError naming the file.

Each file is built byte by byte in ``tmp_path``: NRRD/MetaImage headers naming data files outside
their folder or declaring more voxels than they hold, gzip bombs in ``.nii.gz``, and header dims
that are negative or whose product wraps a 64-bit integer. Honest files still read like the
reference readers (nibabel, SimpleITK). Times are CPU seconds of the process
(``time.process_time``), so that a busy machine does not make them flaky.
"""

from __future__ import annotations

import bz2
import functools
import json
import os
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import gpuprep as gp
import gpuprep.io as gio
from gpuprep.errors import ImageReadError
from gpuprep.io import gzip_fast, limits
from tests.conftest import file_digest

sitk = pytest.importorskip("SimpleITK")

ROOT = Path(__file__).resolve().parents[2]
BOMB_ZEROS = 64 << 20  # the gzip bomb's payload: 64 MiB of zeros, about 65 KB compressed
_NIFTI1_DIM = 40  # offset of dim[8] (int16) in the NIfTI-1 header
_NIFTI2_DIM = 16  # offset of dim[8] (int64) in the NIfTI-2 header
_MGH_DIMS = 4  # offset of the four big-endian int32 dims in the MGH header


def _assert_refused(path, match):
    """``read_image`` raises ImageReadError naming the file and matching ``match``; the file is unchanged."""
    digest = file_digest(path)
    with pytest.raises(ImageReadError) as info:
        gio.read_image(path)
    message = str(info.value)
    assert str(path) in message, message
    assert re.search(match, message), message
    assert file_digest(path) == digest
    return message


def _nrrd(path: Path, fields: str, data: bytes = b"") -> Path:
    """An NRRD file: the magic line, ``fields`` (one per line), a blank line and ``data``."""
    path.write_bytes(b"NRRD0004\n" + fields.encode() + b"\n\n" + data)
    return path


def _mhd(path: Path, data_file: str, dims="2 2 2", extra="") -> Path:
    """A MetaImage header of uint8 voxels whose ``ElementDataFile`` is ``data_file``."""
    text = f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\n{extra}ElementType = MET_UCHAR\n"
    path.write_text(f"{text}ElementDataFile = {data_file}\n")
    return path


def _nifti_bytes(shape=(4, 4, 4), dtype=np.int16, klass=nib.Nifti1Image) -> bytes:
    data = np.arange(int(np.prod(shape))).reshape(shape).astype(dtype)
    return klass(data, np.diag([1.0, 2.0, 3.0, 1.0]), dtype=dtype).to_bytes()


def _patched(raw: bytes, offset: int, fmt: str, *values) -> bytes:
    patched = bytearray(raw)
    struct.pack_into(fmt, patched, offset, *values)
    return bytes(patched)


def _write(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip_fast.compress(raw) if path.name.endswith((".gz", ".mgz")) else raw)
    return path


@functools.cache
def _compressed_zeros(size: int) -> bytes:
    """A gzip member of ``size`` zero bytes, compressed in 1 MiB chunks (never held whole)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    parts = [packer.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join([*parts, packer.flush()])


def _gzip_bomb(path: Path) -> Path:
    """A ``.nii.gz`` whose header declares 4x4x4 int16 voxels, followed by 64 MiB of zeros."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = packer.compress(_nifti_bytes())
    chunk = bytes(1 << 20)
    parts = [packer.compress(chunk) for _ in range(BOMB_ZEROS // len(chunk))]
    path.write_bytes(b"".join([head, *parts, packer.flush()]))
    return path


def _measure_refusals(paths: list[Path]) -> list[dict]:
    """Refuse each file in one fresh interpreter; return the CPU seconds and peak RSS growth (bytes) of each."""
    script = """
import json, resource, sys, time
import SimpleITK
from gpuprep.errors import ImageReadError
from gpuprep.io import read_image
for path in sys.argv[1:]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.process_time()
    try:
        read_image(path)
        outcome = "read"
    except ImageReadError:
        outcome = "refused"
    seconds = time.process_time() - start
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(json.dumps({"file": path, "outcome": outcome, "seconds": seconds, "rss_growth": growth}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", script, *map(str, paths)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return [json.loads(line) for line in done.stdout.strip().splitlines()[-len(paths) :]]


@pytest.fixture
def no_simpleitk_read(monkeypatch):
    """Make SimpleITK.ReadImage fail the test: a crafted header must be refused before SimpleITK reads."""

    def forbidden(*args, **kwargs):
        raise AssertionError(f"SimpleITK.ReadImage{args} was called")

    monkeypatch.setattr(sitk, "ReadImage", forbidden)


# -- detached data files ---------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> Path:
    """``tmp_path/images`` holds the headers; ``tmp_path/outside.raw`` (8 bytes) lies outside it."""
    (tmp_path / "outside.raw").write_bytes(bytes(range(8)))
    (tmp_path / "images").mkdir()
    return tmp_path / "images"


@pytest.mark.parametrize(
    ("data_file", "rule"),
    [
        ("/etc/passwd", "absolute path"),
        ("{outside}", "absolute path"),
        ("../outside.raw", r"contains '\.\.'"),
        ("LIST 3\n../outside.raw", r"contains '\.\.'"),
        ("../outside%d.raw 0 0 1 3", r"contains '\.\.'"),
    ],
    ids=["etc-passwd", "absolute", "dotdot", "list-dotdot", "pattern-dotdot"],
)
def test_nrrd_detached_data_file_outside_folder_is_refused(folder, data_file, rule):
    data_file = data_file.format(outside=folder.parent / "outside.raw")
    path = folder / "crafted.nhdr"
    path.write_text(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: {data_file}\n")
    if "%" in data_file:
        (folder.parent / "outside0.raw").write_bytes(bytes(8))
    _assert_refused(path, rf"refusing the detached data file .*{rule}")


@pytest.mark.parametrize(("data_file", "rule"), [("{outside}", "absolute path"), ("../outside.raw", r"'\.\.'")])
def test_metaimage_detached_data_file_outside_folder_is_refused(folder, data_file, rule):
    path = _mhd(folder / "crafted.mhd", data_file.format(outside=folder.parent / "outside.raw"))
    _assert_refused(path, rf"refusing the detached data file .*{rule}")


def test_metaimage_detached_data_file_symlink_out_of_folder_is_refused(folder):
    (folder / "link.raw").symlink_to(folder.parent / "outside.raw")
    path = _mhd(folder / "crafted.mhd", "link.raw")
    _assert_refused(path, r"refusing the detached data file 'link.raw': it resolves to .*outside\.raw, outside")


@pytest.mark.parametrize("extension", [".nhdr", ".mhd"])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_detached_data_file_inside_folder_reads_like_simpleitk(tmp_path, extension, compressed):
    values = np.random.default_rng(0).integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    path = tmp_path / f"honest{extension}"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path), compressed)
    assert len(list(tmp_path.iterdir())) == 2  # the header and its detached data file
    data, _ = gio.read_image(path)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)
    np.testing.assert_array_equal(data[0].numpy(), expected)


# -- declared sizes larger than the file -----------------------------------------------------------


def _nrrd_1500_cubed(path: Path) -> Path:
    """The issue's file: 171 bytes of NRRD declaring 1500³ uint8 voxels (3.4 GB)."""
    header = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1500 1500 1500\nencoding: raw\n\n"
    path.write_bytes(header + bytes(171 - len(header)))
    return path


def test_nrrd_declaring_1500_cubed_voxels_in_171_bytes_is_refused(tmp_path):
    path = _nrrd_1500_cubed(tmp_path / "big.nrrd")
    assert path.stat().st_size == 171
    _assert_refused(path, r"declares 3375000000 bytes of voxels, but the data holds only \d+ bytes \(raw")


def test_nrrd_declaring_1500_cubed_voxels_in_171_bytes_is_refused_fast_and_small(tmp_path, no_simpleitk_read):
    path = _nrrd_1500_cubed(tmp_path / "big.nrrd")
    tracemalloc.start()
    start = time.process_time()
    try:
        _assert_refused(path, "declares 3375000000 bytes")
        seconds = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 1.0
    assert peak < 4 << 20, peak


@pytest.mark.parametrize("extension", [".nrrd", ".mha"])
def test_compressed_header_declaring_more_than_deflate_can_hold_is_refused(tmp_path, extension):
    packed = zlib.compress(bytes(1000), 9)
    if extension == ".nrrd":
        path = _nrrd(tmp_path / "big.nrrd", "type: uint8\ndimension: 3\nsizes: 1000 1000 1000\nencoding: gzip", packed)
    else:
        path = tmp_path / "big.mha"
        extra = f"CompressedData = True\nCompressedDataSize = {len(packed)}\n"
        path.write_bytes(_mhd(path, "LOCAL", dims="1000 1000 1000", extra=extra).read_bytes() + packed)
    _assert_refused(path, r"declares \d+ bytes of voxels, but the data holds only \d+ bytes \(deflate encoding")


def test_bzip2_nrrd_is_refused_before_simpleitk_allocates(tmp_path, no_simpleitk_read):
    fields = "type: uint8\ndimension: 3\nsizes: 1500 1500 1500\nencoding: bzip2"
    path = _nrrd(tmp_path / "big.nrrd", fields, bz2.compress(bytes(100)))
    _assert_refused(path, r"unsupported NRRD encoding 'bzip2'")


def test_metaimage_declaring_more_than_its_detached_file_is_refused(folder):
    (folder / "short.raw").write_bytes(bytes(8))
    path = _mhd(folder / "big.mhd", "short.raw", dims="1000 1000 1000")
    _assert_refused(path, r"declares 1000000000 bytes of voxels, but the data holds only 8 bytes")


def test_nrrd_sizes_whose_product_wraps_int64_are_refused(tmp_path):
    path = _nrrd(
        tmp_path / "wrap.nrrd", "type: short\ndimension: 5\nsizes: 16384 16384 16384 16384 16384\nencoding: raw"
    )
    _assert_refused(path, r"shape \(16384, 16384, 16384, 16384, 16384\).*MAX_IMAGE_BYTES")


def test_nrrd_negative_size_is_refused(tmp_path):
    path = _nrrd(tmp_path / "negative.nrrd", "type: uint8\ndimension: 3\nsizes: 2 -2 2\nencoding: raw", bytes(8))
    _assert_refused(path, r"negative axis length in shape \(2, -2, 2\)")


def test_metaimage_negative_number_of_channels_is_refused(tmp_path):
    path = _mhd(tmp_path / "channels.mha", "LOCAL", dims="1000 1000 1000", extra="ElementNumberOfChannels = -1\n")
    _assert_refused(path, r"ElementNumberOfChannels = -1 is below 1")


# -- gzip bombs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", gzip_fast._BACKENDS if gzip_fast.backend == "isal" else ["zlib"])
def test_nifti_gzip_bomb_is_refused_fast_and_small(tmp_path, backend):
    path = _gzip_bomb(tmp_path / "bomb.nii.gz")
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    start = time.process_time()
    try:
        with gzip_fast.use_backend(backend):
            _assert_refused(path, r"inflates to more than \d+ bytes, more than its header declares")
        seconds = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 1.0
    assert peak < 8 << 20, peak  # the payload is 64 MiB


def test_nifti_gzip_bomb_in_a_second_member_is_refused(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip_fast.compress(_nifti_bytes()) + _compressed_zeros(BOMB_ZEROS))
    _assert_refused(path, r"inflates to more than \d+ bytes")


def test_nifti_gz_declaring_more_than_deflate_can_hold_is_refused(tmp_path):
    raw = _patched(_nifti_bytes(), _NIFTI1_DIM, "<4h", 3, 1000, 1000, 1000)
    path = _write(tmp_path / "big.nii.gz", raw)
    _assert_refused(path, r"declares 2000000000 bytes of voxels, .* inflates at most \d+:1")


@pytest.mark.parametrize(
    ("name", "klass", "dtype"),
    [
        ("a.nii.gz", nib.Nifti1Image, np.int16),
        ("b.nii.gz", nib.Nifti2Image, np.float32),
        ("c.mgz", nib.MGHImage, np.float32),
    ],
)
def test_honest_compressed_file_reads_like_nibabel(tmp_path, name, klass, dtype):
    values = np.random.default_rng(1).normal(size=(6, 7, 8, 2)).astype(dtype) * 100
    nib.save(klass(values, np.diag([1.0, 2.0, 3.0, 1.0])), tmp_path / name)
    data, _ = gio.read_image(tmp_path / name)
    expected = nib.load(tmp_path / name).get_fdata()
    np.testing.assert_array_equal(data.numpy(), np.moveaxis(expected, 3, 0).astype(dtype))


def test_honest_multi_member_nii_gz_reads_like_nibabel(tmp_path):
    raw = _nifti_bytes(shape=(40, 50, 60))
    blocks = [raw[start : start + 65280] for start in range(0, len(raw), 65280)]  # bgzip's block size
    path = tmp_path / "members.nii.gz"
    path.write_bytes(b"".join(map(gzip_fast.compress, blocks)) + gzip_fast.compress(b""))  # and its EOF member
    data, _ = gio.read_image(path)
    np.testing.assert_array_equal(data[0].numpy(), np.asanyarray(nib.load(path).dataobj))


def test_nifti_gz_with_many_empty_gzip_members_is_refused_fast(tmp_path):
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip_fast.compress(_nifti_bytes()) + gzip_fast.compress(b"") * 40_000)
    start = time.process_time()
    with pytest.raises(ImageReadError, match=r"members\.nii\.gz: .*more than \d+ members for at most \d+ inflated"):
        gio.read_image(path)
    # each member copied the rest of the file (1.9 s, quadratic); then the header read visited them all (0.14 s)
    assert time.process_time() - start < 0.1


# -- header overflow -------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", [".nii", ".nii.gz"])
def test_nifti_dims_whose_product_wraps_int64_are_refused(tmp_path, extension):
    raw = _patched(_nifti_bytes(), _NIFTI1_DIM, "<8h", 5, 16384, 16384, 16384, 16384, 16384, 1, 1)
    path = _write(tmp_path / f"wrap{extension}", raw)
    _assert_refused(path, r"shape \(16384, 16384, 16384, 16384, 16384\) of 2-byte voxels.*MAX_IMAGE_BYTES")


@pytest.mark.parametrize("extension", [".nii", ".nii.gz"])
def test_nifti_negative_dim_is_refused(tmp_path, extension):
    path = _write(tmp_path / f"negative{extension}", _patched(_nifti_bytes(), _NIFTI1_DIM + 2, "<h", -4))
    _assert_refused(path, r"negative axis length in shape \(-4, 4, 4\)")


@pytest.mark.parametrize("dim0", [0, 8, -3])
def test_nifti_dim0_out_of_range_is_refused(tmp_path, dim0):
    path = _write(tmp_path / "dim0.nii", _patched(_nifti_bytes(), _NIFTI1_DIM, "<h", dim0))
    _assert_refused(path, rf"dim\[0\] \(number of axes\) is {dim0}; NIfTI allows 1 to 7")


@pytest.mark.parametrize("extension", [".nii", ".nii.gz"])
def test_nifti2_int64_dims_are_refused(tmp_path, extension):
    raw = _patched(_nifti_bytes(klass=nib.Nifti2Image), _NIFTI2_DIM + 8, "<q", 1 << 62)
    path = _write(tmp_path / f"huge{extension}", raw)
    _assert_refused(path, rf"shape \({1 << 62}, 4, 4\).*MAX_IMAGE_BYTES")


def test_mgh_negative_dims_are_refused(tmp_path):
    raw = nib.MGHImage(np.zeros((4, 4, 4), np.float32), np.eye(4)).to_bytes()
    path = _write(tmp_path / "negative.mgz", _patched(raw, _MGH_DIMS, ">i", -4))
    _assert_refused(path, r"negative axis length in shape \(-4, 4, 4, 1\)")


# -- datasets skip crafted files -------------------------------------------------------------------


def test_crafted_files_in_dataset_with_on_error_skip_are_skipped(tmp_path, folder):
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.eye(4)), good)
    crafted = [
        _write(tmp_path / "wrap.nii", _patched(_nifti_bytes(), _NIFTI1_DIM, "<8h", 5, *(16384,) * 5, 1, 1)),
        _write(tmp_path / "negative.nii", _patched(_nifti_bytes(), _NIFTI1_DIM + 2, "<h", -4)),
        _gzip_bomb(tmp_path / "bomb.nii.gz"),
        _nrrd_1500_cubed(tmp_path / "big.nrrd"),
        _mhd(folder / "crafted.mhd", "../outside.raw"),
    ]
    records = [{"image": str(p)} for p in [good, *crafted]]
    dataset = gp.data.Dataset(
        records, transform=gp.Compose([gp.LoadImage("image")]), on_error="skip", check_files=False
    )
    with pytest.warns(UserWarning, match="skipped"):
        samples = [dataset[i] for i in range(len(dataset))]
    assert samples[0] is not None and samples[0]["image"].shape == (1, 4, 5, 6)
    assert samples[1:] == [None] * len(crafted)
    assert [entry["file"] for entry in dataset.report] == [str(p) for p in crafted]
    assert all(entry["error"].startswith("ImageReadError") for entry in dataset.report), dataset.report


def test_crafted_files_are_dropped_by_the_dataset_file_check(tmp_path, folder):
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.eye(4)), good)
    crafted = [
        _write(tmp_path / "wrap.nii", _patched(_nifti_bytes(), _NIFTI1_DIM, "<8h", 5, *(16384,) * 5, 1, 1)),
        _write(tmp_path / "negative.nii", _patched(_nifti_bytes(), _NIFTI1_DIM + 2, "<h", -4)),
        _write(tmp_path / "big.nii.gz", _patched(_nifti_bytes(), _NIFTI1_DIM, "<4h", 3, 1000, 1000, 1000)),
        _nrrd_1500_cubed(tmp_path / "big.nrrd"),
        _mhd(folder / "crafted.mhd", "../outside.raw"),
    ]
    with pytest.warns(UserWarning, match="record skipped"):
        dataset = gp.data.Dataset([{"image": str(p)} for p in [good, *crafted]], on_error="skip")
    assert dataset.indices == [0]
    assert [entry["file"] for entry in dataset.report] == [str(p) for p in crafted]


def test_max_image_bytes_is_a_setting_the_user_can_raise(tmp_path, monkeypatch):
    path = _write(tmp_path / "small.nii.gz", _nifti_bytes())  # 4x4x4 int16: 128 bytes of voxels
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", 100)
    _assert_refused(path, r"128 bytes; gpuprep\.io\.limits\.MAX_IMAGE_BYTES allows 100")
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", 128)
    data, _ = gio.read_image(path)
    np.testing.assert_array_equal(data[0].numpy(), np.asanyarray(nib.load(path).dataobj))


# -- measured in a fresh process: time and peak memory (RSS) of each refusal -------------------------


@pytest.mark.slow
def test_crafted_files_are_refused_fast_and_small_in_a_fresh_process(tmp_path, folder):
    (folder / "short.raw").write_bytes(bytes(8))
    crafted = [
        _nrrd_1500_cubed(tmp_path / "big.nrrd"),
        _mhd(folder / "big.mhd", "short.raw", dims="1500 1500 1500"),
        _gzip_bomb(tmp_path / "bomb.nii.gz"),
        _write(tmp_path / "big.nii.gz", _patched(_nifti_bytes(), _NIFTI1_DIM, "<4h", 3, 1000, 1000, 1000)),
        _write(tmp_path / "wrap.nii", _patched(_nifti_bytes(), _NIFTI1_DIM, "<8h", 5, *(16384,) * 5, 1, 1)),
    ]
    for measured in _measure_refusals(crafted):
        assert measured["outcome"] == "refused", measured
        assert measured["seconds"] < 1.0, measured
        assert measured["rss_growth"] < 16 << 20, measured  # honest readers of these headers take GBs
