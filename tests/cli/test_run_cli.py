"""``gpuprep run``: exit statuses, the summary, one-line errors, and Ctrl-C leaving whole files only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import gpuprep as gp
from gpuprep.cli.main import main
from tests.data.test_dataset_run import write_head

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    """A pipeline YAML and a folder of four small heads."""
    pipeline = tmp_path / "p.yaml"
    gp.Compose([gp.Resample("image", 3.0), gp.ForegroundMask("image", mask_key="head")]).to_yaml(pipeline)
    for index in range(4):
        write_head(tmp_path / "data" / f"sub-{index}_T1w.nii.gz", index)
    return pipeline, tmp_path / "data"


def gpuprep(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        status = main(["run", *map(str, args)])
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def assert_whole_files_only(folder: Path) -> None:
    """No temporary file is left, every image loads completely and every sidecar is valid JSON."""
    assert not [p for p in folder.rglob(".*")], "a temporary file was left behind"
    for path in folder.rglob("*.nii.gz"):
        assert np.isfinite(nib.load(path).get_fdata()).all()
    for path in folder.rglob("*.json"):
        json.loads(path.read_text())


def test_run_prints_the_summary_and_exits_0_then_1_when_an_input_fails(files, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GPUPREP_DEBUG", raising=False)
    pipeline, data = files
    status, out, err = gpuprep(capsys, pipeline, data, "--output", tmp_path / "out", "--no-progress")
    assert status == 0, err
    assert "4 done, 0 skipped (up to date), 0 failed in" in out and "files/s" in out
    assert "slowest steps" in out and "Resample" in out
    (data / "sub-1_T1w.nii.gz").write_bytes(b"not an image")
    status, out, err = gpuprep(capsys, pipeline, data, "-o", tmp_path / "out", "--resume", "--progress")
    assert status == 1
    assert "0 done, 3 skipped (up to date), 1 failed" in out and f"failures listed in {tmp_path}/out/report.csv" in out
    assert "4/4" in err and "file/s" in err  # the tqdm bar
    assert (tmp_path / "out/report.csv").read_text().splitlines()[1].startswith("sub-1_T1w.nii.gz,LoadImage,")
    status, out, err = gpuprep(capsys, pipeline, data, "-o", tmp_path / "out2", "--on-error", "raise")
    assert status == 2
    assert err.strip().splitlines()[-1].startswith("gpuprep run: error: sub-1_T1w.nii.gz: step LoadImage failed:")


@pytest.mark.parametrize("arguments, message", [
    (["missing.yaml", "{data}"], "PIPELINE missing.yaml: no such file"),
    (["{pipeline}", "{data}/nothing.nii.gz"], "INPUT {data}/nothing.nii.gz: no such file or folder"),
    (["{pipeline}", "{data}", "--output", "{data}/out"], "is inside the scanned INPUT folder"),
    (["{pipeline}", "{data}", "--pattern", "x.nii"], "--pattern must contain a wildcard (* or ?)"),
    (["{pipeline}", "{data}", "--pattern", "*_T2w.nii.gz"], "no file matching --pattern '*_T2w.nii.gz'"),
    (["{pipeline}", "{data}", "--device", "tpu"], "--device must be a torch device such as 'cpu' or 'cuda'"),
])
def test_bad_input_is_one_line_naming_the_argument_the_rule_and_the_value(files, tmp_path, capsys, monkeypatch,
                                                                           arguments, message):
    monkeypatch.delenv("GPUPREP_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    pipeline, data = files
    arguments = [a.format(pipeline=pipeline, data=data) for a in arguments]
    status, _, err = gpuprep(capsys, *arguments, *([] if "--output" in arguments else ["--output", "out"]))
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("gpuprep run: error: ")
    assert message.format(data=data) in err


def test_workers_must_be_a_positive_whole_number(files, capsys):
    status, _, err = gpuprep(capsys, *files, "-o", "out", "--workers", "two")
    assert status == 2 and "argument --workers: must be a whole number of at least 1, got 'two'" in err


def test_ctrl_c_during_a_write_leaves_no_half_written_file_and_resume_finishes(files, tmp_path, capsys, monkeypatch):
    """In this process: Ctrl-C arrives while the third image is being compressed."""
    from gpuprep.io import gzip_fast

    pipeline, data = files
    compress, calls = gzip_fast.compress, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return compress(*args, **kwargs)

    monkeypatch.setattr(gzip_fast, "compress", interrupted)
    status, _, err = gpuprep(capsys, pipeline, data, "-o", tmp_path / "out")
    assert status == 130 and "interrupted" in err
    assert len(list((tmp_path / "out").rglob("*.nii.gz"))) == 2
    assert_whole_files_only(tmp_path / "out")
    monkeypatch.setattr(gzip_fast, "compress", compress)
    status, out, _ = gpuprep(capsys, pipeline, data, "-o", tmp_path / "out", "--resume")
    assert status == 0 and "3 done, 1 skipped (up to date), 0 failed" in out


def test_ctrl_c_in_a_terminal_stops_two_workers_cleanly(files, tmp_path, capsys):
    """A real run with 2 worker processes, interrupted like Ctrl-C in a terminal (SIGINT to the process group)."""
    pipeline, data = files
    for index in range(4, 40):
        write_head(data / f"sub-{index}_T1w.nii.gz", index)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "gpuprep.cli.main", "run", str(pipeline), str(data), "-o", str(out),
               "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPUPREP_DEBUG": ""}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.rglob("*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    done = len(list(out.rglob("*_head.nii.gz")))
    assert 0 < done < 40
    assert_whole_files_only(out)
    status, stdout, _ = gpuprep(capsys, pipeline, data, "-o", out, "--resume")
    assert status == 0 and f"{40 - done} done, {done} skipped (up to date), 0 failed" in stdout
