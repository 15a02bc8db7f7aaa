"""CacheDataset is never stale: every file an entry depends on is in its key; writes fail softly.

Each case that served a stale entry before is named after itself. Results are compared with what
the uncached :class:`~gpuprep.data.dataset.Dataset` gives for the changed files, and the voxels
with SimpleITK's or nibabel's reading of them.
"""

from __future__ import annotations

import locale
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.data import cache_key
from gpuprep.data.cache import CacheDataset
from gpuprep.data.dataset import Dataset
from gpuprep.errors import ConfigError
from gpuprep.models.skull_strip import SkullStrip
from gpuprep.models.unet import build_unet, save_checkpoint
from tests.data.test_cache import assert_same
from tests.models.test_inference import ThresholdNet
from tests.models.test_pretrained import tiny_spec

sitk = pytest.importorskip("SimpleITK")
from tests.io.test_itk import _itk_image, _write_dicom_series  # noqa: E402  (needs SimpleITK)

MODES = ["stat", "content"]
# A file system stamps ctime from a coarse clock (one tick: 1 to 10 ms on Linux); the stat mode
# tells two writes apart by ctime only when they fall in different ticks.
CLOCK_TICK_S = 0.05


@pytest.fixture(autouse=True)
def keep_locale():
    """Writing DICOM with SimpleITK (GDCM) sets the process locale to "C"; later tests decode text with it."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


def loading() -> gp.Compose:
    return gp.Compose([gp.LoadImage("image")])


def write_nifti(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return str(path)


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """Overwrite ``path`` in place with same-size bytes and set its access and modification times back."""
    stat = path.stat()
    assert len(data) == stat.st_size
    time.sleep(CLOCK_TICK_S)
    with open(path, "r+b") as stream:
        stream.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size


def copy_preserving_mtime(source: Path, target: Path) -> None:
    """``cp -p source target``: the bytes and the modification time of ``source`` onto ``target``."""
    time.sleep(CLOCK_TICK_S)
    shutil.copy2(source, target)


def fresh_process() -> None:
    """Forget the content digests remembered in this process, as a new process would."""
    cache_key._digest.cache_clear()


def cached(records, folder: Path, mode: str, transform=None) -> CacheDataset:
    return CacheDataset(records, transform or loading(), cache=folder, cache_key=mode)


def misses(data: CacheDataset) -> int:
    return data.stats["misses"]


# -- files behind a record value ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_dicom_folder_given_as_str_is_recomputed_when_its_slices_change(tmp_path, mode):
    folder = tmp_path / "series"
    _write_dicom_series(_itk_image(seed=0, oblique=False), folder)
    records = [{"image": str(folder)}]
    data = cached(records, tmp_path / "cache", mode)
    first = data[0]
    old_entry = data.entry_path(0)

    new_image = _itk_image(seed=1, oblique=False)
    time.sleep(CLOCK_TICK_S)
    _write_dicom_series(new_image, folder)
    fresh_process()
    assert data.entry_path(0) != old_entry
    again = data[0]
    assert misses(data) == 2
    assert not torch.equal(again["image"], first["image"])
    assert_same(again, Dataset(records, loading())[0])
    np.testing.assert_array_equal(again["image"][0].numpy(), sitk.GetArrayFromImage(new_image).transpose(2, 1, 0))


@pytest.mark.parametrize("mode", MODES)
def test_dicom_folder_given_as_str_or_path_gets_the_same_entry(tmp_path, mode):
    folder = tmp_path / "series"
    _write_dicom_series(_itk_image(oblique=False), folder)
    as_str = cached([{"image": str(folder)}], tmp_path / "cache", mode).entry_path(0)
    assert cached([{"image": folder}], tmp_path / "cache", mode).entry_path(0) == as_str


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extension", [".mhd", ".nhdr"])
def test_header_whose_detached_data_file_changes_is_recomputed(tmp_path, extension, mode):
    header = tmp_path / f"scan{extension}"
    sitk.WriteImage(_itk_image(seed=0), str(header))
    (raw,) = gp.io.detached.detached_data_files(header)
    records = [{"image": str(header)}]
    data = cached(records, tmp_path / "cache", mode)
    first = data[0]

    new_image = _itk_image(seed=1)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    sitk.WriteImage(new_image, str(scratch / f"scan{extension}"))
    rewrite_keeping_mtime(raw, (scratch / raw.name).read_bytes())  # the header itself is untouched
    fresh_process()
    again = data[0]
    assert misses(data) == 2
    assert not torch.equal(again["image"], first["image"])
    assert_same(again, Dataset(records, loading())[0])
    np.testing.assert_array_equal(again["image"][0].numpy(), sitk.GetArrayFromImage(new_image).transpose(2, 1, 0))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["os.utime", "cp -p"])
def test_same_size_change_with_mtime_restored_is_recomputed(tmp_path, mode, how):
    path = tmp_path / "scan.nii"
    write_nifti(path, np.full((4, 5, 6), 1.0, np.float32))
    records = [{"image": str(path)}]
    data = cached(records, tmp_path / "cache", mode)
    data[0]
    changed = np.full((4, 5, 6), 7.0, np.float32)
    if how == "os.utime":
        write_nifti(tmp_path / "new.nii", changed)
        rewrite_keeping_mtime(path, (tmp_path / "new.nii").read_bytes())
    else:
        write_nifti(tmp_path / "new.nii", changed)
        os.utime(tmp_path / "new.nii", ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
        copy_preserving_mtime(tmp_path / "new.nii", path)
    fresh_process()
    again = data[0]
    assert misses(data) == 2
    np.testing.assert_array_equal(again["image"][0].numpy(), nib.load(path).get_fdata())
    assert_same(again, Dataset(records, loading())[0])


def test_content_mode_recomputes_on_any_byte_change_and_ignores_a_touch(tmp_path):
    path = tmp_path / "scan.nii"
    write_nifti(path, np.zeros((4, 5, 6), np.float32))
    records = [{"image": str(path)}]
    data = cached(records, tmp_path / "cache", "content")
    data[0]
    entry = data.entry_path(0)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, new times
    assert data.entry_path(0) == entry
    data[0]
    assert (data.stats["hits"], misses(data)) == (1, 1)

    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # one bit of the last voxel
    rewrite_keeping_mtime(path, bytes(raw))
    assert data.entry_path(0) != entry
    again = data[0]
    assert misses(data) == 2
    np.testing.assert_array_equal(again["image"][0].numpy(), nib.load(path).get_fdata())


@pytest.mark.parametrize("mode", MODES)
def test_unchanged_files_still_hit_in_a_new_dataset(tmp_path, mode):
    paths = [write_nifti(tmp_path / f"s{i}.nii.gz", np.full((4, 4, 4), i, np.float32)) for i in range(3)]
    records = [{"image": p, "age": 30 + i} for i, p in enumerate(paths)]
    first = cached(records, tmp_path / "cache", mode)
    samples = [first[i] for i in range(3)]
    fresh_process()
    second = cached(records, tmp_path / "cache", mode)
    for i in range(3):
        assert_same(second[i], samples[i])
    assert (second.stats["hits"], misses(second)) == (3, 0)


def test_content_mode_reads_each_file_once_per_process(tmp_path):
    paths = [write_nifti(tmp_path / f"s{i}.nii", np.full((4, 4, 4), i, np.float32)) for i in range(3)]
    fresh_process()
    data = cached([{"image": p} for p in paths], tmp_path / "cache", "content")
    for _ in range(3):  # epochs
        [data[i] for i in range(3)]
    assert cache_key._digest.cache_info().misses == 3


# -- files named by transforms --------------------------------------------------------------------


def constant_mask_checkpoint(path: Path, brain: bool) -> Path:
    """A tiny brain-mask U-Net whose output is one class everywhere (its last layer: zero weights, a bias)."""
    spec = tiny_spec("brain-mask")
    model = build_unet(spec["architecture"])
    with torch.no_grad():
        last = dict(model.named_parameters())
        last["model.2.1.conv.unit0.conv.weight"].zero_()
        last["model.2.1.conv.unit0.conv.bias"].copy_(torch.tensor([-50.0, 50.0] if brain else [50.0, -50.0]))
    return save_checkpoint(path, model, spec)


def skull_strip(model) -> gp.Compose:
    return gp.Compose([gp.LoadImage("image"), SkullStrip("image", model=model, device="cpu", apply=False)])


def test_skullstrip_checkpoint_that_changes_is_recomputed(tmp_path):
    image = write_nifti(tmp_path / "scan.nii.gz", np.random.default_rng(0).random((12, 12, 12)).astype(np.float32))
    records = [{"image": image}]
    checkpoint = constant_mask_checkpoint(tmp_path / "mask.pt", brain=False)
    before = cached(records, tmp_path / "cache", "stat", skull_strip(checkpoint))
    assert int(before[0]["brain_mask"].max()) == 0

    strip_old_weights = skull_strip(checkpoint)  # loads the old weights ...
    constant_mask_checkpoint(checkpoint, brain=True)  # ... then the file is overwritten
    after = cached(records, tmp_path / "cache", "stat", skull_strip(checkpoint))
    assert after.entry_path(0) != before.entry_path(0)
    assert int(after[0]["brain_mask"].min()) == 1
    assert_same(after[0], Dataset(records, skull_strip(checkpoint))[0])
    # a transform still holding the old weights keeps the old entry, whatever the file holds now
    stale_holder = cached(records, tmp_path / "cache", "stat", strip_old_weights)
    assert stale_holder.entry_path(0) == before.entry_path(0)
    assert int(stale_holder[0]["brain_mask"].max()) == 0


def test_model_module_with_other_weights_gets_its_own_entry(tmp_path):
    image = write_nifti(tmp_path / "scan.nii.gz", np.random.default_rng(0).random((12, 12, 12)).astype(np.float32))
    records = [{"image": image}]
    positive, negative = ThresholdNet(), ThresholdNet()
    with torch.no_grad():
        negative.gain.neg_()  # the same class and name, the opposite segmentation
    first = cached(records, tmp_path / "cache", "stat", skull_strip(positive))
    second = cached(records, tmp_path / "cache", "stat", skull_strip(negative))
    assert first.entry_path(0) != second.entry_path(0)
    first[0]
    assert_same(second[0], Dataset(records, skull_strip(negative))[0])


# -- write failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_full_disk_during_cache_write_warns_and_returns_the_sample(tmp_path, monkeypatch, on_error):
    records = [{"image": write_nifti(tmp_path / "scan.nii.gz", np.ones((4, 4, 4), np.float32))}]
    folder = tmp_path / "cache"
    data = CacheDataset(records, loading(), cache=folder, on_error=on_error)
    real_save = torch.save

    def full_disk(obj, target, *args, **kwargs):
        Path(target).write_bytes(b"PK\x03\x04 half an entry")  # torch.save dies midway
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.warns(UserWarning, match="cannot write cache entry .*PytorchStreamWriter"):
        sample = data[0]
    assert_same(sample, Dataset(records, loading())[0])
    assert list(folder.iterdir()) == []  # no half-written entry, no temporary file
    assert data.stats["write_failures"] == 1 and data.report == []

    monkeypatch.setattr(torch, "save", real_save)  # space again: the entry is written
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(data[0], sample)
    assert [p.name for p in folder.iterdir()] == [data.entry_path(0).name]


# -- memory cache and arguments -------------------------------------------------------------------


def test_memory_cache_says_it_is_computed_at_construction(tmp_path, caplog):
    records = [{"image": write_nifti(tmp_path / "scan.nii.gz", np.ones((4, 4, 4), np.float32))}]
    with caplog.at_level(logging.INFO, logger="gpuprep.data.cache"):
        CacheDataset(records, loading())
    assert "at construction" in caplog.text
    assert "at construction" in CacheDataset.__doc__


def test_cache_key_must_be_stat_or_content(tmp_path):
    records = [{"image": write_nifti(tmp_path / "scan.nii.gz", np.ones((4, 4, 4), np.float32))}]
    with pytest.raises(ConfigError, match=r"cache_key must be one of \('stat', 'content'\), got 'mtime'"):
        CacheDataset(records, loading(), cache=tmp_path / "cache", cache_key="mtime")
