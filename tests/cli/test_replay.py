"""``gpuprep replay``: a file round-tripped through gpuprep, then through its sidecar, is identical."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

import gpuprep as gp
from gpuprep.cli.main import main
from tests.conftest import file_digest, oblique_affine


def _source(tmp_path, name="in.nii.gz", seed=0):
    """A small LAS-oblique float32 NIfTI written by nibabel, with a bright blob inside (a "head")."""
    rng = np.random.default_rng(seed)
    volume = rng.random((14, 12, 10)).astype(np.float32) * 50
    volume[3:11, 3:9, 2:8] += 800
    affine = oblique_affine(spacing=(1.3, 1.1, 1.8))
    affine[:, 0] *= -1  # flip the first axis: a left-handed (LAS-like) grid
    path = tmp_path / name
    nib.save(nib.Nifti1Image(volume, affine), path)
    return path


def _assert_same_file(a, b):
    first, second = nib.load(a), nib.load(b)
    np.testing.assert_array_equal(np.asarray(first.dataobj), np.asarray(second.dataobj))
    assert np.asarray(first.dataobj).dtype == np.asarray(second.dataobj).dtype
    np.testing.assert_array_equal(first.affine, second.affine)
    assert gzip.decompress(a.read_bytes()) == gzip.decompress(b.read_bytes())


def test_sidecar_rebuilds_identical_output_file(tmp_path, capsys):
    source = _source(tmp_path)
    digest = file_digest(source)
    assert main(["demo", "--input", str(source), "--output", str(tmp_path / "out"), "--device", "cpu"]) == 0
    written = sorted((tmp_path / "out").glob("*.nii.gz"))
    assert len(written) == 3  # the image, its foreground mask and its N4 bias field
    assert main(["replay", str(tmp_path / "out" / "in_preprocessed.json"),
                 "--output-dir", str(tmp_path / "again")]) == 0
    assert "same parameters as the recorded run" in capsys.readouterr().out
    for path in written:
        _assert_same_file(path, tmp_path / "again" / path.name)
    assert file_digest(source) == digest


def _random_run(tmp_path, source, epoch=3, sample_index=5, seed=21):
    """A Python run with fused random spatial steps and a random intensity step, written by SaveImage."""
    pipeline = gp.Compose([
        gp.LoadImage("image", dtype="float32"),
        gp.Orientation("image", "RAS"),
        gp.Resample("image", 1.4),
        gp.RandAffine("image", rotate=15, scale=0.1, translate=2.0),
        gp.RandFlip("image", p=0.5),
        gp.RandGamma("image", p=1.0),
        gp.SaveImage("image", tmp_path / "out"),
    ], seed=seed)
    pipeline.set_epoch(epoch)
    return pipeline({"image": str(source), "sample_index": sample_index})


def test_sidecar_rebuilds_identical_output_file_with_random_steps(tmp_path):
    source = _source(tmp_path)
    out = _random_run(tmp_path, source)
    assert any("fused" in r for r in gp.get_history(out))
    assert main(["replay", str(tmp_path / "out" / "in.json"), "--output-dir", str(tmp_path / "again")]) == 0
    _assert_same_file(tmp_path / "out" / "in.nii.gz", tmp_path / "again" / "in.nii.gz")
    # The rerun's own sidecar rebuilds the same run again.
    again = gp.read_sidecar(tmp_path / "again" / "in.json")
    assert again["pipeline"]["transforms"][:-1] == gp.read_sidecar(tmp_path / "out" / "in.nii.gz")["pipeline"][
        "transforms"][:-1]


def test_sidecar_holds_seed_epoch_sample_index_and_io_steps(tmp_path):
    out = _random_run(tmp_path, _source(tmp_path), epoch=3, sample_index=5)
    sidecar = gp.read_sidecar(tmp_path / "out" / "in.json")
    pipeline = sidecar["pipeline"]
    names = [step["name"] for step in pipeline["transforms"]]
    assert names == ["LoadImage", "Orientation", "Resample", "RandAffine", "RandFlip", "RandGamma", "SaveImage"]
    assert pipeline["transforms"][0]["config"]["dtype"] == "float32"
    assert pipeline["transforms"][-1]["config"]["output_dir"] == str(tmp_path / "out")
    assert (pipeline["epoch"], pipeline["fuse"], sidecar["sample_index"]) == (3, True, 5)
    # Each random step holds the seed its stream used: the one derived from the Compose seed.
    records = {r["name"]: r for r in gp.get_history(out)}
    for step in pipeline["transforms"][3:6]:
        stream = records[step["name"]]["stream"]
        assert step["config"]["seed"] == stream["seed"] == gp.random.sample_seed(21, names.index(step["name"]))
        assert (stream["epoch"], stream["sample_index"]) == (3, 5)
    assert gp.Compose.from_config(pipeline).epoch == 3


def test_replay_refuses_to_write_over_the_original_outputs(tmp_path, capsys):
    _random_run(tmp_path, _source(tmp_path))
    before = file_digest(tmp_path / "out" / "in.nii.gz")
    sidecar = str(tmp_path / "out" / "in.json")
    assert main(["replay", sidecar, "--output-dir", str(tmp_path / "out")]) == 2
    assert "holds the original outputs" in capsys.readouterr().err
    assert main(["replay", sidecar]) == 0  # default: a new folder beside the original one
    _assert_same_file(tmp_path / "out" / "in.nii.gz", tmp_path / "out-replay" / "in.nii.gz")
    assert main(["replay", sidecar]) == 2  # the replay folder is not overwritten either
    error = capsys.readouterr().err
    assert "in.nii.gz: the file exists" in error and "--overwrite" in error
    assert main(["replay", sidecar, "--output-dir", str(tmp_path / "out"), "--overwrite"]) == 0
    assert file_digest(tmp_path / "out" / "in.nii.gz") == before


def test_replay_errors_name_the_file(tmp_path, capsys):
    missing = tmp_path / "nowhere.json"
    assert main(["replay", str(missing)]) == 2
    assert f"sidecar not found: {missing}" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["replay", str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not a valid JSON sidecar" in capsys.readouterr().err
    source = _source(tmp_path)
    _random_run(tmp_path, source)
    sidecar = tmp_path / "out" / "in.json"
    source.unlink()
    assert main(["replay", str(sidecar), "--output-dir", str(tmp_path / "x")]) == 2
    assert f"source of key 'image' not found: {source} (named in {sidecar})" in capsys.readouterr().err
    assert main(["replay", str(sidecar), "--input", "label=x.nii.gz"]) == 2
    assert "inputs ['label'] were not loaded by the run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        main(["replay", str(sidecar), "--input", "image"])
    assert error.value.code == 2 and "expected KEY=PATH, got 'image'" in capsys.readouterr().err
    (tmp_path / "bids.json").write_text('{"RepetitionTime": 2.0}')
    assert main(["replay", str(tmp_path / "bids.json")]) == 2
    assert "bids.json: not a gpuprep sidecar" in capsys.readouterr().err
    old = json.loads(sidecar.read_text())
    old["gpuprep_sidecar"] = 1
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main(["replay", str(tmp_path / "old.json")]) == 2
    assert "sidecar format 1 cannot be rerun" in capsys.readouterr().err


def test_replay_with_another_input_runs_the_same_pipeline_on_it(tmp_path):
    _random_run(tmp_path, _source(tmp_path))
    other = _source(tmp_path, "other.nii.gz", seed=1)
    assert main(["replay", str(tmp_path / "out" / "in.json"), "--input", f"image={other}",
                 "--output-dir", str(tmp_path / "other")]) == 0
    rerun = gp.read_sidecar(tmp_path / "other" / "other.json")
    assert rerun["source"] == str(other)
    # The same random draws (same seeds, epoch and sample index) on another file.
    original = gp.read_sidecar(tmp_path / "out" / "in.json")
    def draws(sidecar):
        return [r["params"].get("draw", r["params"]) for r in sidecar["history"] if "stream" in r]

    assert len(draws(original)) == 3 and draws(rerun) == draws(original)


def test_replay_says_when_it_computes_on_another_kind_of_device(tmp_path, capsys):
    _random_run(tmp_path, _source(tmp_path))
    sidecar = json.loads((tmp_path / "out" / "in.json").read_text())
    assert sidecar["output"]["device"] == "cpu"
    sidecar["output"]["device"] = "cuda:0"  # as if the run had been made on a GPU
    (tmp_path / "gpu.json").write_text(json.dumps(sidecar))
    assert main(["replay", str(tmp_path / "gpu.json"), "--device", "cpu", "--output-dir", str(tmp_path / "cpu")]) == 0
    assert "the run was computed on cuda:0, this rerun on cpu" in capsys.readouterr().out
    _assert_same_file(tmp_path / "out" / "in.nii.gz", tmp_path / "cpu" / "in.nii.gz")
