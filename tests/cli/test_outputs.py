"""The command line never loses or misnames an output, and reports every IO failure in one line."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import tempfile

import nibabel as nib
import numpy as np
import pytest

import gpuprep as gp
from gpuprep.cli.main import main
from gpuprep.errors import ImageWriteError
from gpuprep.models import pretrained
from tests.conftest import file_digest
from tests.models.test_pretrained import tiny_checkpoint

SHAPE = (14, 12, 10)


def _write(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A small head-like volume: a bright ellipsoid on a dark, noisy background."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    inside = np.linalg.norm((index - np.array(SHAPE) / 2) / (np.array(SHAPE) / 3), axis=-1) < 1
    data = (100 * inside + 5 * rng.random(SHAPE) + seed).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([-2.0, 2.0, 2.0, 1.0])), path)
    return path


def _one_line_error(capsys) -> str:
    """The single stderr line of a failed command (no traceback)."""
    error = capsys.readouterr().err
    assert "Traceback" not in error
    lines = error.strip().splitlines()
    assert len(lines) == 1, error
    return lines[0]


def _demo(*args: str) -> int:
    return main(["demo", "--device", "cpu", *args])


def _tree(folder: pathlib.Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


def test_demo_same_basename_from_two_folders_keeps_both(tmp_path):
    first, second = _write(tmp_path / "site1" / "T1.nii.gz", 1), _write(tmp_path / "site2" / "T1.nii.gz", 2)
    assert _demo("--input", str(first), str(second), "--output", str(tmp_path / "out")) == 0
    for source in (first, second):
        output = tmp_path / "out" / source.parent.name / "T1_preprocessed.nii.gz"
        assert gp.read_sidecar(output)["source"] == str(source)
        # each output holds its own input: the same values as preprocessing that input alone
        alone = tmp_path / "alone" / source.parent.name
        assert _demo("--input", str(source), "--output", str(alone)) == 0
        np.testing.assert_array_equal(nib.load(output).get_fdata(),
                                      nib.load(alone / "T1_preprocessed.nii.gz").get_fdata())


def test_demo_dotted_stems_do_not_collide(tmp_path):
    inputs = [_write(tmp_path / "in" / f"sub-01.ses-{s}_T1w.nii.gz", seed) for seed, s in enumerate("xy")]
    assert _demo("--input", *map(str, inputs), "--output", str(tmp_path / "out")) == 0
    for source in inputs:
        stem = source.name.removesuffix(".nii.gz")
        for name in ("_preprocessed.nii.gz", "_preprocessed.json", "_foreground_preprocessed.nii.gz",
                     "_pipeline.yaml", "_qc.png"):
            assert (tmp_path / "out" / f"{stem}{name}").is_file(), name
        assert gp.read_sidecar(tmp_path / "out" / f"{stem}_preprocessed.nii.gz")["source"] == str(source)


def test_demo_names_mask_and_image_by_key(tmp_path):
    source = _write(tmp_path / "in" / "head.nii.gz")
    assert _demo("--input", str(source), "--output", str(tmp_path / "out")) == 0
    out = tmp_path / "out"
    image_sidecar = gp.read_sidecar(out / "head_preprocessed.nii.gz")
    mask_sidecar = gp.read_sidecar(out / "head_foreground_preprocessed.nii.gz")
    assert image_sidecar["output"]["dtype"] == "float32"
    assert mask_sidecar["output"]["dtype"] in ("uint8", "bool")
    mask = np.asarray(nib.load(out / "head_foreground_preprocessed.nii.gz").dataobj)
    assert set(np.unique(mask)) == {0, 1}
    # the image is z-scored inside the mask (ZNormalize, the pipeline's last step)
    image = nib.load(out / "head_preprocessed.nii.gz").get_fdata()
    assert image[mask > 0].mean() == pytest.approx(0, abs=1e-4)
    assert image[mask > 0].std() == pytest.approx(1, abs=1e-2)
    assert not (out / "head_image_preprocessed.nii.gz").exists()


def test_demo_same_input_twice_is_refused_before_any_work(tmp_path, capsys):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    other = _write(tmp_path / "in" / "t1.nii", 3)  # the same stem, another extension
    for inputs in ([source, source], [source, other]):
        assert _demo("--input", *map(str, inputs), "--output", str(tmp_path / "out")) == 2
        line = _one_line_error(capsys)
        assert "would both be written to" in line and "t1_preprocessed" in line
        assert not (tmp_path / "out").exists()


def test_demo_existing_outputs_are_refused_unless_overwrite(tmp_path, capsys):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    assert _demo("--input", str(source), "--output", str(tmp_path / "out")) == 0
    before = {name: file_digest(tmp_path / "out" / name) for name in _tree(tmp_path / "out")}
    capsys.readouterr()
    assert _demo("--input", str(source), "--output", str(tmp_path / "out")) == 2
    line = _one_line_error(capsys)
    assert "t1_preprocessed" in line and "exists" in line and "--overwrite" in line
    assert {name: file_digest(tmp_path / "out" / name) for name in _tree(tmp_path / "out")} == before
    assert _demo("--input", str(source), "--output", str(tmp_path / "out"), "--overwrite") == 0


def test_cli_output_is_existing_file_one_line_exit_2(tmp_path, capsys):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    assert _demo("--input", str(source), "--output", str(existing)) == 2
    line = _one_line_error(capsys)
    assert str(existing) in line and "is a file, not a folder" in line
    assert main(["segment", str(source), str(existing / "seg.nii.gz"), "--device", "cpu"]) == 2
    line = _one_line_error(capsys)
    assert str(existing) in line and "is a file, not a folder" in line
    assert existing.read_text() == "keep me"


def test_cli_output_path_is_a_folder_one_line_exit_2(tmp_path, capsys):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    folder = tmp_path / "seg.nii.gz"
    folder.mkdir()
    assert main(["segment", str(source), str(folder), "--device", "cpu"]) == 2
    line = _one_line_error(capsys)
    assert str(folder) in line and "is a folder" in line
    (tmp_path / "out" / "t1_preprocessed.nii.gz").mkdir(parents=True)
    assert _demo("--input", str(source), "--output", str(tmp_path / "out")) == 2
    line = _one_line_error(capsys)
    assert "t1_preprocessed.nii.gz" in line and "is a folder" in line


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder with mode 0o555. Root may write there anyway: then the kernel's refusal is simulated
    where files are created (``tempfile.mkstemp``, used by the atomic writes and the write probe)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        original = tempfile.mkstemp

        def refused(*args, dir=None, **kwargs):
            if dir is not None and pathlib.Path(dir).is_relative_to(folder):
                raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, "tmp"))
            return original(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refused)
    yield folder
    folder.chmod(0o755)


def test_cli_read_only_output_folder_one_line_exit_2(tmp_path, capsys, read_only):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    assert _demo("--input", str(source), "--output", str(read_only / "out")) == 2
    line = _one_line_error(capsys)
    assert str(read_only) in line and "not writable" in line
    assert _tree(read_only) == []


def test_cli_info_on_a_folder_one_line_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert str(tmp_path) in _one_line_error(capsys)


def test_cli_full_disk_one_line_exit_2(tmp_path, capsys, monkeypatch):
    source = _write(tmp_path / "in" / "t1.nii.gz")

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    assert _demo("--input", str(source), "--output", str(tmp_path / "out")) == 2
    line = _one_line_error(capsys)
    assert "No space left on device" in line and str(tmp_path / "out" / "t1_preprocessed") in line
    assert not (tmp_path / "out").exists()


def test_cli_memory_error_one_line_exit_2(tmp_path, capsys, monkeypatch):
    source = _write(tmp_path / "in" / "t1.nii.gz")

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr("gpuprep.transforms.io.read_image", no_memory)
    assert _demo("--input", str(source), "--output", str(tmp_path / "out")) == 2
    assert "out of memory" in _one_line_error(capsys)


def test_cli_debug_variable_shows_the_traceback(tmp_path, monkeypatch):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    (tmp_path / "out").write_text("a file")
    monkeypatch.setenv("GPUPREP_DEBUG", "1")
    with pytest.raises(ImageWriteError, match="is a file, not a folder"):
        _demo("--input", str(source), "--output", str(tmp_path / "out"))


@pytest.fixture
def model_spy(monkeypatch):
    """Count the models loaded and the forward passes run by ``gpuprep segment``."""
    calls = {"load": 0, "forward": 0}
    original = pretrained.load_pretrained

    def spied(*args, **kwargs):
        calls["load"] += 1
        model = original(*args, **kwargs)
        model.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
        return model

    monkeypatch.setattr(pretrained, "load_pretrained", spied)
    return calls


@pytest.mark.parametrize("case", ["bad_extension", "folder", "under_a_file", "qc_is_a_folder", "read_only"])
def test_segment_checks_output_before_running_model(tmp_path, capsys, model_spy, read_only, case):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    weights = tiny_checkpoint(tmp_path, "brain-tissue")
    output, extra = tmp_path / "out" / "seg.nii.gz", []
    if case == "bad_extension":
        output = tmp_path / "out" / "seg.png"
    elif case == "folder":
        output.mkdir(parents=True)
    elif case == "under_a_file":
        (tmp_path / "out").write_text("a file")
    elif case == "qc_is_a_folder":
        (tmp_path / "qc").mkdir()
        extra = ["--qc", str(tmp_path / "qc")]
    else:
        output = read_only / "seg.nii.gz"
    assert main(["segment", str(source), str(output), "--weights", str(weights), "--device", "cpu", *extra]) == 2
    line = _one_line_error(capsys)
    expected = {"bad_extension": "unknown output extension", "folder": "is a folder", "qc_is_a_folder": "--qc",
                "under_a_file": "is a file, not a folder", "read_only": "not writable"}
    assert expected[case] in line
    assert model_spy == {"load": 0, "forward": 0}
    assert main(["segment", str(source), str(tmp_path / "ok.nii.gz"), "--weights", str(weights),
                 "--device", "cpu"]) == 0
    assert model_spy["forward"] > 0  # the spy sees the model when it does run


def test_segment_failure_leaves_no_empty_folders(tmp_path, capsys, monkeypatch):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    output = tmp_path / "new" / "deeper" / "seg.nii.gz"
    # the model cannot be loaded: after the output checks, before any write
    assert main(["segment", str(source), str(output), "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "model checkpoint not found" in _one_line_error(capsys)
    assert not (tmp_path / "new").exists()
    # the disk fills up at the last write (the volumes JSON): the label map and PNG go too
    original = pathlib.Path.write_bytes

    def full_at_json(self, data):
        if ".json." in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_at_json)
    weights = tiny_checkpoint(tmp_path, "brain-tissue")
    assert main(["segment", str(source), str(output), "--weights", str(weights), "--device", "cpu"]) == 2
    line = _one_line_error(capsys)
    assert "No space left on device" in line and "seg.json" in line
    assert not (tmp_path / "new").exists()


def test_segment_next_to_a_bids_json_keeps_it_and_reruns_replace_its_own(tmp_path, capsys, model_spy):
    source = _write(tmp_path / "in" / "t1.nii.gz")
    weights = tiny_checkpoint(tmp_path, "brain-tissue")
    output = tmp_path / "derivatives" / "sub-01_dseg.nii.gz"
    output.parent.mkdir()
    bids_json = output.with_name("sub-01_dseg.json")  # the default volumes path
    bids_json.write_text('{"Description": "tissue segmentation", "Sources": ["bids:raw:sub-01_T1w.nii.gz"]}')
    digest = file_digest(bids_json)
    args = ["segment", str(source), str(output), "--weights", str(weights), "--device", "cpu"]
    assert main(args) == 2
    line = _one_line_error(capsys)
    assert str(bids_json) in line and "never replaced" in line
    assert file_digest(bids_json) == digest and model_spy["load"] == 0 and not output.exists()
    volumes = tmp_path / "derivatives" / "volumes.json"
    assert main([*args, "--volumes", str(volumes)]) == 0
    assert main([*args, "--volumes", str(volumes)]) == 0  # a rerun replaces its own outputs
    assert json.loads(volumes.read_text())["output"] == str(output) and file_digest(bids_json) == digest
