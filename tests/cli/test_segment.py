"""``gpuprep segment`` in-process on small NIfTI files with tiny checkpoints."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from gpuprep.cli import segment
from gpuprep.cli.main import main
from gpuprep.models import pretrained
from tests.conftest import file_digest, oblique_affine
from tests.models.test_pretrained import LABELS, tiny_checkpoint


@pytest.fixture
def head(tmp_path):
    """A small oblique, anisotropic NIfTI (int16, as scanners write) with a bright blob."""
    rng = np.random.default_rng(0)
    shape = (22, 26, 12)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    distance = np.linalg.norm((index - np.array(shape) / 2) * np.array([1.2, 0.9, 2.5]), axis=-1)
    data = (200 * (distance < 9) + 40 + 10 * rng.random(shape)).astype(np.int16)
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(data, oblique_affine()), path)
    return path


@pytest.mark.parametrize("task", ["brain-tissue", "brain-mask"])
def test_segment_writes_labels_qc_and_volumes(head, tmp_path, task, capsys):
    weights = tiny_checkpoint(tmp_path, task)
    digest = file_digest(head)
    output = tmp_path / "out" / "head_seg.nii.gz"
    output.parent.mkdir()
    assert main(["segment", str(head), str(output), "--weights", str(weights), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "skull strip" in printed and " ms" in printed and "mL" in printed and "total" in printed
    assert file_digest(head) == digest  # the input is never modified
    source, written = nib.load(head), nib.load(output)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, rtol=0, atol=1e-5)
    labels = np.asarray(written.dataobj)
    assert labels.dtype == np.uint8
    names = LABELS[task]
    assert set(np.unique(labels)) <= {int(k) for k in names}
    with Image.open(tmp_path / "out" / "head_seg_qc.png") as png:
        assert png.format == "PNG" and png.mode == "RGB" and png.width > 200 and png.height > 200
    report = json.loads((tmp_path / "out" / "head_seg.json").read_text())
    assert report["task"] == task and report["device"] == "cpu"
    assert report["weights_sha256"] == file_digest(weights)
    stages = {"load image", "load model", "skull strip", "write NIfTI", "QC PNG", "total"}
    if task == "brain-tissue":  # the fixture is a head (no constant background): skull-stripped first
        stages |= {"load mask model", "tissue network", "refinement"}
        assert report["skull_strip"]["ran"] is True
    assert set(report["timings_s"]) == stages
    voxel_mm3 = abs(np.linalg.det(source.affine[:3, :3]))
    assert report["voxel_volume_mm3"] == pytest.approx(voxel_mm3, rel=1e-9)
    assert set(report["labels"]) == set(names.values())
    for value, name in names.items():
        count = int((labels == int(value)).sum())
        entry = report["labels"][name]
        assert entry["label"] == int(value) and entry["voxels"] == count
        assert entry["volume_ml"] == pytest.approx(count * voxel_mm3 / 1000, rel=1e-9)
    assert sum(e["voxels"] for e in report["labels"].values()) == labels.size
    assert report["history"][-1]["params"]["flip_average"] == (task == "brain-tissue")  # the defaults
    assert report["history"][-1]["params"]["refine"] == (task == "brain-tissue")


def test_no_refine_takes_the_network_argmax(head, tmp_path):
    weights = tiny_checkpoint(tmp_path, "brain-tissue")
    volumes = tmp_path / "v.json"
    args = ["segment", str(head), str(tmp_path / "t.nii.gz"), "--weights", str(weights), "--device", "cpu",
            "--volumes", str(volumes), "--no-refine"]
    assert main(args) == 0
    assert json.loads(volumes.read_text())["history"][-1]["params"]["refine"] is False


def test_custom_qc_and_volumes_paths(head, tmp_path):
    weights = tiny_checkpoint(tmp_path, "brain-mask")
    qc, volumes = tmp_path / "qc.png", tmp_path / "v.json"
    args = ["segment", str(head), str(tmp_path / "mask.nii"), "--weights", str(weights), "--task", "brain-mask",
            "--qc", str(qc), "--volumes", str(volumes), "--device", "cpu", "--flip-average"]
    assert main(args) == 0
    assert qc.is_file() and volumes.is_file() and (tmp_path / "mask.nii").is_file()
    assert json.loads(volumes.read_text())["history"][-1]["params"]["flip_average"] is True
    assert not (tmp_path / "mask.json").exists() and not (tmp_path / "mask_qc.png").exists()


def test_errors_are_one_line_with_exit_code_2(head, tmp_path, capsys, monkeypatch):
    weights = tiny_checkpoint(tmp_path, "brain-tissue")
    missing = tmp_path / "nope.nii.gz"
    assert main(["segment", str(missing), str(tmp_path / "o.nii.gz"), "--weights", str(weights)]) == 2
    error = capsys.readouterr().err
    assert "gpuprep segment: error:" in error and str(missing) in error and "Traceback" not in error
    digest = file_digest(head)
    assert main(["segment", str(head), str(head), "--weights", str(weights)]) == 2
    assert "same file as INPUT" in capsys.readouterr().err
    assert file_digest(head) == digest
    assert main(["segment", str(head), str(tmp_path / "o.nii.gz"), "--weights", str(weights),
                 "--task", "brain-mask"]) == 2
    assert "is for 'brain-tissue'" in capsys.readouterr().err
    assert main(["segment", str(head), str(tmp_path / "o.nii.gz"), "--weights", str(tmp_path / "no.pt")]) == 2
    assert "model checkpoint not found" in capsys.readouterr().err
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "empty")
    assert main(["segment", str(head), str(tmp_path / "o.nii.gz"), "--device", "cpu"]) == 2
    assert "not bundled in this build" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_missing_output_folders_are_created(tmp_path):
    source = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((12, 12, 12)).astype(np.float32), np.eye(4)), source)
    output = tmp_path / "new" / "deeper" / "seg.nii.gz"
    assert main(["segment", str(source), str(output), "--weights", str(tiny_checkpoint(tmp_path, "brain-tissue")),
                 "--device", "cpu"]) == 0
    assert output.is_file() and output.with_suffix("").with_suffix(".json").is_file()


@pytest.fixture
def phantom_head(tmp_path):
    """A head at 2 mm the bundled brain-mask model reads: brain, CSF, dark skull and bright scalp shells.

    The air holds a little noise (as scanners write), so the input does not look skull-stripped.
    """
    rng = np.random.default_rng(3)
    shape = (64, 72, 64)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    radius = np.linalg.norm((index - (np.array(shape) - 1) / 2) / np.array([26.0, 31.0, 25.0]), axis=-1)
    image = np.select([radius < 0.8, radius < 0.86, radius < 0.93, radius < 1.0], [800, 300, 50, 700], 0)
    image = image + rng.integers(0, 15, shape)
    path = tmp_path / "phantom_head.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path, radius < 0.8


def test_brain_tissue_on_a_head_skull_strips_first_and_labels_only_the_brain(phantom_head, tmp_path, capsys):
    import gpuprep as gp

    path, brain = phantom_head
    weights = tiny_checkpoint(tmp_path, "brain-tissue", roi_size=(32, 32, 32))
    output = tmp_path / "seg.nii.gz"
    assert main(["segment", str(path), str(output), "--weights", str(weights), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "input is a whole head" in printed and "SkullStrip first" in printed
    order = [line[2:18].strip() for line in printed.splitlines() if line.endswith(" ms")]  # the stages, in order
    assert order == ["load image", "load model", "load mask model", "skull strip", "tissue network",
                     "refinement", "write NIfTI", "QC PNG", "total"]
    report = json.loads(output.with_suffix("").with_suffix(".json").read_text())
    history = report["history"]
    assert [record["name"] for record in history] == ["LoadImage", "SkullStrip", "SegmentBrain"]
    strip, segment = history[1], history[2]
    bundled = pretrained.load_pretrained("brain-mask", device="cpu")
    assert strip["params"]["task"] == "brain-mask" and strip["params"]["weights_sha256"] == bundled.weights_sha256
    assert strip["config"]["model"] == "brain-mask" and strip["config"]["mask_key"] == "brain_mask"
    assert strip["config"]["apply"] is True
    assert strip["config"]["largest_component"] is True and strip["config"]["fill_holes"] is True
    assert segment["config"]["mask_key"] == "brain_mask" and segment["params"]["refine"] is True
    assert report["skull_strip"]["ran"] is True and report["skull_strip"]["skull_stripped_input"] is False
    assert report["skull_strip"]["weights_sha256"] == bundled.weights_sha256
    # The brain mask of the run, replayed from its history: no label outside it.
    replayed = gp.replay({"image": str(path)}, history[:2])
    mask = replayed["brain_mask"][0].numpy().astype(bool)
    assert 2 * (mask & brain).sum() / (mask.sum() + brain.sum()) > 0.9  # the mask is the phantom's brain
    assert report["skull_strip"]["brain_mask_ml"] == pytest.approx(mask.sum() * 8 / 1000)
    labels = np.asarray(nib.load(output).dataobj)
    assert labels[mask].any() and not labels[~mask].any()


def test_skull_stripped_flag_skips_skull_strip(phantom_head, tmp_path, capsys):
    path, _ = phantom_head
    weights = tiny_checkpoint(tmp_path, "brain-tissue", roi_size=(32, 32, 32))  # fewer windows: all the head
    volumes = tmp_path / "v.json"
    args = ["segment", str(path), str(tmp_path / "t.nii.gz"), "--weights", str(weights), "--device", "cpu",
            "--volumes", str(volumes)]
    assert main([*args, "--skull-stripped"]) == 0
    assert "input is skull-stripped (as told (--skull-stripped))" in capsys.readouterr().out
    report = json.loads(volumes.read_text())
    assert [record["name"] for record in report["history"]] == ["LoadImage", "ForegroundMask", "SegmentBrain"]
    assert report["history"][1]["config"]["mask_key"] == "brain_mask"
    assert report["skull_strip"]["ran"] is False and "skull strip" not in report["timings_s"]
    assert set(report["timings_s"]) >= {"foreground mask", "tissue network", "refinement"}


def test_a_constant_background_and_a_brain_sized_foreground_count_as_skull_stripped(tmp_path, capsys):
    """The automatic rule, both ways, and --no-skull-stripped overriding it."""
    shape = (48, 56, 48)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    inside = np.linalg.norm((index - (np.array(shape) - 1) / 2) / np.array([20.0, 24.0, 20.0]), axis=-1) < 1
    brain = torch.from_numpy(800.0 * inside)[None]
    rule = segment.skull_stripped
    # 2 mm voxels: 321 mL above a background of exact zeros (69 % of the voxels); 4 mm: 2570 mL, still a
    # brain's volume; 5 mm: 5020 mL, a head. Air noise (no constant background): a head whatever its size.
    assert rule(brain, np.diag([2.0, 2.0, 2.0, 1.0]), None) == (True, "69 % of the voxels at the minimum 0, "
                                                                       "321 mL above it")
    assert rule(brain, np.diag([4.0, 4.0, 4.0, 1.0]), None)[0] is True
    assert rule(brain, np.diag([5.0, 5.0, 5.0, 1.0]), None)[0] is False
    noisy = brain + torch.rand(brain.shape)
    assert rule(noisy, np.diag([2.0, 2.0, 2.0, 1.0]), None)[0] is False
    assert rule(noisy, np.eye(4), True) == (True, "as told (--skull-stripped)")
    assert rule(brain, np.eye(4), False) == (False, "as told (--no-skull-stripped)")
    # The command line applies it: ForegroundMask for the brain, or SkullStrip when told so.
    weights = tiny_checkpoint(tmp_path, "brain-tissue", roi_size=(32, 32, 32))
    path = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image((800 * inside).astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    for extra, first_step in (([], "ForegroundMask"), (["--no-skull-stripped"], "SkullStrip")):
        volumes = tmp_path / f"v{len(extra)}.json"
        assert main(["segment", str(path), str(tmp_path / f"s{len(extra)}.nii.gz"), "--weights", str(weights),
                     "--device", "cpu", "--volumes", str(volumes), *extra]) == 0
        report = json.loads(volumes.read_text())
        assert report["history"][1]["name"] == first_step
        assert report["skull_strip"]["ran"] is bool(extra)
    printed = capsys.readouterr().out
    assert "input is skull-stripped (69 % of the voxels at the minimum 0, 321 mL above it)" in printed
    assert "input is a whole head (as told (--no-skull-stripped))" in printed
