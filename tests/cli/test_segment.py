"""``gpuprep segment`` in-process on small NIfTI files with tiny checkpoints."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

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
    assert "segment" in printed and " ms" in printed and "mL" in printed
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
    assert set(report["timings_s"]) >= {"load image", "load model", "segment", "write NIfTI", "QC PNG"}
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
