"""SaveImage and write_image never lose a file: existing files, sidecars, collisions, failures."""

from __future__ import annotations

import errno
import json
import pathlib

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep as gp
import gpuprep.io as gio
from gpuprep.errors import ImageWriteError, OutputExistsError, TransformError
from gpuprep.io.sidecar import SIDECAR_FORMAT
from gpuprep.transforms.io import LoadImage, SaveImage
from tests.conftest import file_digest

SHAPE = (6, 7, 8)


def _write(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1.0, 1.0, 1.0])), path)
    return path


def _bids_input(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    image = _write(tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    sidecar = image.with_name("sub-01_T1w.json")
    sidecar.write_text(json.dumps({"RepetitionTime": 2.3, "EchoTime": 0.00296, "FlipAngle": 9}))
    return image, sidecar


def _files(folder: pathlib.Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overwrite", [False, True])
def test_saveimage_next_to_bids_input_keeps_its_json_sidecar(tmp_path, overwrite):
    image, bids_json = _bids_input(tmp_path)
    before = _files(image.parent)
    sample = LoadImage("image")({"image": image})
    # .nii next to the .nii.gz input: the output's sidecar path is the input's BIDS sidecar
    with pytest.raises(OutputExistsError, match=r"sub-01_T1w\.json.*gpuprep did not write.*never replaced"):
        SaveImage("image", image.parent, output_ext=".nii", overwrite=overwrite)(sample)
    assert _files(image.parent) == before  # neither the JSON replaced nor a lone image written
    assert json.loads(bids_json.read_text())["RepetitionTime"] == 2.3


def test_write_image_never_replaces_a_json_it_did_not_write(tmp_path):
    image, bids_json = _bids_input(tmp_path)
    digest = file_digest(bids_json)
    target = image.with_name("sub-01_T1w.nii")
    with pytest.raises(OutputExistsError, match=r"sub-01_T1w\.json"):
        gio.write_image(target, torch.zeros(1, 2, 2, 2), torch.eye(4))
    assert file_digest(bids_json) == digest and not target.exists()
    gio.write_image(target, torch.zeros(1, 2, 2, 2), torch.eye(4), sidecar=False)  # the image alone is fine
    assert file_digest(bids_json) == digest


def test_saveimage_refuses_outputs_of_an_earlier_run_unless_overwrite(tmp_path):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    sample = LoadImage("image")({"image": source})
    SaveImage("image", tmp_path / "out")(sample)
    before = _files(tmp_path / "out")
    with pytest.raises(OutputExistsError, match=r"t1\.nii\.gz: the file exists; pass overwrite=True"):
        SaveImage("image", tmp_path / "out")(sample)
    assert _files(tmp_path / "out") == before
    # overwrite=True replaces gpuprep's own outputs (image and sidecar)
    flipped = {**sample, "image": sample["image"].flip(1)}
    SaveImage("image", tmp_path / "out", overwrite=True)(flipped)
    written = nib.load(tmp_path / "out" / "t1.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), flipped["image"][0].numpy())
    assert gio.read_sidecar(tmp_path / "out" / "t1.nii.gz")["gpuprep_sidecar"] == SIDECAR_FORMAT


def test_saveimage_run_twice_replaces_its_own_files(tmp_path):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    save = SaveImage("image", tmp_path / "out")
    sample = LoadImage("image")({"image": source})
    save(sample)
    save({**sample, "image": sample["image"] * 2})  # the same sample again, e.g. a pipeline run twice
    np.testing.assert_allclose(nib.load(tmp_path / "out" / "t1.nii.gz").get_fdata(),
                               2 * nib.load(source).get_fdata(), rtol=1e-6)


@pytest.mark.parametrize("overwrite", [False, True])
def test_saveimage_same_basename_from_two_folders_in_two_calls_is_refused(tmp_path, overwrite):
    first, second = _write(tmp_path / "site1" / "T1.nii.gz", 1), _write(tmp_path / "site2" / "T1.nii.gz", 2)
    save = SaveImage("image", tmp_path / "out", overwrite=overwrite)
    save(LoadImage("image")({"image": first}))
    before = _files(tmp_path / "out")
    with pytest.raises(TransformError, match=r"T1\.nii\.gz was already written in this run from .*site1"):
        save(LoadImage("image")({"image": second}))
    assert _files(tmp_path / "out") == before
    np.testing.assert_array_equal(nib.load(tmp_path / "out" / "T1.nii.gz").get_fdata(), nib.load(first).get_fdata())


def test_saveimage_checks_every_target_before_writing_anything(tmp_path):
    paths = [_write(tmp_path / "in" / f"s{i}.nii.gz", i) for i in range(2)]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "s1.json").write_text('{"note": "mine"}')  # not a gpuprep sidecar
    batch = LoadImage("image")({"image": paths})
    with pytest.raises(OutputExistsError, match=r"s1\.json"):
        SaveImage("image", tmp_path / "out", overwrite=True)(batch)
    assert _files(tmp_path / "out") == {"s1.json": file_digest(tmp_path / "out" / "s1.json")}


def test_saveimage_target_that_is_a_folder_is_refused(tmp_path):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    (tmp_path / "out" / "t1.nii.gz").mkdir(parents=True)
    with pytest.raises(ImageWriteError, match=r"cannot write .*t1\.nii\.gz: it is a folder"):
        SaveImage("image", tmp_path / "out", overwrite=True)(LoadImage("image")({"image": source}))
    assert _files(tmp_path / "out") == {}


def test_saveimage_output_dir_that_is_a_file_is_refused(tmp_path):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    (tmp_path / "out").write_text("a file")
    with pytest.raises(ImageWriteError, match=r"out is a file, not a folder"):
        SaveImage("image", tmp_path / "out" / "deeper")(LoadImage("image")({"image": source}))
    assert (tmp_path / "out").read_text() == "a file"


def test_saveimage_names_a_derived_mask_after_its_key(tmp_path):
    source = _write(tmp_path / "in" / "sub-01_T1w.nii.gz")
    sample = gp.ForegroundMask("image", mask_key="foreground")(LoadImage("image")({"image": source}))
    # the derived key first: the loaded image still keeps its file's name
    SaveImage(["foreground", "image"], tmp_path / "out", sidecar=False)(sample)
    image = nib.load(tmp_path / "out" / "sub-01_T1w.nii.gz")
    np.testing.assert_array_equal(image.get_fdata(), nib.load(source).get_fdata())
    mask = np.asarray(nib.load(tmp_path / "out" / "sub-01_T1w_foreground.nii.gz").dataobj)
    np.testing.assert_array_equal(mask, sample["foreground"][0].numpy())


def test_saveimage_full_disk_names_the_file_and_leaves_no_folder(tmp_path, monkeypatch):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    sample = LoadImage("image")({"image": source})

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    with pytest.raises(ImageWriteError, match=r"cannot write .*new.*t1\.(json|nii\.gz): No space left on device"):
        SaveImage("image", tmp_path / "new" / "deeper")(sample)
    assert not (tmp_path / "new").exists()


def test_write_image_failed_sidecar_leaves_no_lone_image(tmp_path, monkeypatch):
    original = pathlib.Path.write_bytes

    def failing_json(self, data):
        if ".json." in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", failing_json)
    with pytest.raises(OSError, match="No space left"):
        gio.write_image(tmp_path / "x.nii.gz", torch.zeros(1, 2, 2, 2), torch.eye(4))
    assert list(tmp_path.iterdir()) == []
