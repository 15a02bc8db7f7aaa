"""The ``gpuprep`` command: demo outputs, help, and clean errors for bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sysconfig
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import gpuprep as gp
from gpuprep.cli.main import main
from tests.conftest import file_digest


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run ``gpuprep ARGS`` in this process (no new interpreter to import torch in) and capture its output."""
    monkeypatch.delenv("GPUPREP_DEBUG", raising=False)

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            status = main(list(args))
        except SystemExit as exit_:  # argparse's --help and usage errors
            status = exit_.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), status, captured.out, captured.err)

    return run


def test_installed_console_script_reports_bad_input_in_one_line_and_exits_2(tmp_path):
    """The one end-to-end run of the installed entry point in its own interpreter (the others run in-process)."""
    script = Path(sysconfig.get_path("scripts")) / "gpuprep"
    result = subprocess.run([str(script), "info", str(tmp_path / "missing.nii.gz")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result
    assert "missing.nii.gz" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_lists_commands(run_cli):
    result = run_cli("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout and "info" in result.stdout


def test_demo_on_the_bundled_sample(tmp_path, run_cli):
    result = run_cli("demo", "--output", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "device cpu" in result.stdout and " ms" in result.stdout
    out = tmp_path / "out"
    image = nib.load(out / "sample_t1w_preprocessed.nii.gz")
    assert image.ndim == 3 and np.isfinite(image.get_fdata()).all()
    sidecar = json.loads((out / "sample_t1w_preprocessed.json").read_text())
    names = [record["name"] for record in sidecar["history"]]
    assert names[0] == "LoadImage" and "Orientation" in names
    assert gp.Compose.from_config(sidecar["pipeline"]).transforms
    assert gp.Compose.from_yaml(out / "sample_t1w_pipeline.yaml").transforms
    labels = np.asarray(nib.load(out / "sample_tissue_preprocessed.nii.gz").dataobj)
    assert labels.dtype.kind in "iu" and set(np.unique(labels)) <= {0, 1, 2, 3}
    with Image.open(out / "sample_t1w_qc.png") as png:
        assert png.format == "PNG" and png.width > 200 and png.height > 200


def test_demo_on_given_files_with_progress(tmp_path, run_cli):
    paths = []
    for index in range(2):
        path = tmp_path / f"in{index}.nii.gz"
        nib.save(nib.Nifti1Image(np.random.default_rng(index).random((12, 10, 8)).astype(np.float32),
                                 np.diag([-1.0, 1.0, 1.0, 1.0])), path)
        paths.append(path)
    digests = [file_digest(p) for p in paths]
    result = run_cli("demo", "--input", *map(str, paths), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "preprocessing" in result.stderr  # the progress bar
    for index in range(2):
        out = nib.load(tmp_path / "out" / f"in{index}_preprocessed.nii.gz")
        assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    assert [file_digest(p) for p in paths] == digests  # inputs untouched


@pytest.mark.parametrize("case", ["missing", "not_an_image", "truncated_gzip"])
def test_bad_input_prints_one_line_and_exits_non_zero(tmp_path, case, run_cli):
    path = tmp_path / "scan.nii.gz"
    if case == "not_an_image":
        path.write_text("this is not a NIfTI file\n")
    elif case == "truncated_gzip":
        nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        assert gzip.decompress  # the file is a cut-off gzip stream
    for command in (["info", str(path)], ["demo", "--input", str(path), "--output", str(tmp_path / "o")]):
        result = run_cli(*command)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        assert "scan.nii.gz" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_cuda_requested_without_cuda(tmp_path, run_cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the error path only exists without it
    result = run_cli("demo", "--device", "cuda", "--output", str(tmp_path))
    assert result.returncode == 2 and "CUDA" in result.stderr and "Traceback" not in result.stderr


def test_info_prints_grid(tmp_path, run_cli):
    path = tmp_path / "x.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([-2.0, 2.0, 3.0, 1.0])), path)
    result = run_cli("info", str(path))
    assert result.returncode == 0
    assert "LAS" in result.stdout and "int16" in result.stdout and "(4, 5, 6)" in result.stdout
