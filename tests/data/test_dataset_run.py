"""run_dataset (``gpuprep run``'s engine): mirrored outputs equal to the pipeline's, sidecars, resume, faults, QC."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.data.dataset_run import run_dataset
from gpuprep.data.engines import map_jobs
from gpuprep.data.run_jobs import input_hash
from gpuprep.errors import ConfigError, DatasetError
from tests.conftest import file_digest, oblique_affine

STEPS = [gp.Orientation("image", "RAS"), gp.Resample("image", 3.0),
         gp.ForegroundMask("image", mask_key="head"), gp.ZNormalize("image", mask="head")]


def write_head(path: Path, seed: int, affine: np.ndarray | None = None, empty: bool = False) -> Path:
    """A small int16 'head' (a bright ellipsoid in noise) written by nibabel."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in (14, 12, 10)), indexing="ij"))
    head = (grid ** 2).sum(0) < 0.6 + 0.1 * rng.random()
    data = rng.normal(20, 5, head.shape) + (0 if empty else 600) * head
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.int16), oblique_affine() if affine is None else affine), path)
    return path


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Path, list[Path]]:
    """A pipeline YAML and a folder of three heads in two subfolders (one oblique)."""
    pipeline = tmp_path / "pipeline.yaml"
    gp.Compose(STEPS).to_yaml(pipeline)
    root = tmp_path / "data"
    files = [write_head(root / "site1" / "sub-01_T1w.nii.gz", 1),
             write_head(root / "site2" / "sub-01_T1w.nii.gz", 2, np.diag([2.0, 2.0, 2.5, 1.0])),
             write_head(root / "site2" / "sub-02_T1w.nii", 3)]
    return pipeline, root, files


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_outputs_mirror_the_inputs_and_equal_the_pipeline_with_stamped_sidecars(dataset, tmp_path):
    pipeline, root, files = dataset
    digests = [file_digest(f) for f in files]
    summary = run_dataset(pipeline, [root], tmp_path / "out")
    assert summary.counts == {"done": 3, "skipped": 0, "failed": 0}
    assert [file_digest(f) for f in files] == digests  # inputs untouched
    out = tmp_path / "out"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz"))
    assert written == ["site1/sub-01_T1w.nii.gz", "site1/sub-01_T1w_head.nii.gz", "site2/sub-01_T1w.nii.gz",
                       "site2/sub-01_T1w_head.nii.gz", "site2/sub-02_T1w.nii.gz", "site2/sub-02_T1w_head.nii.gz"]
    reference = gp.Compose([gp.LoadImage("image"), *STEPS])({"image": str(files[1])})
    np.testing.assert_allclose(load(out / "site2/sub-01_T1w.nii.gz")[..., None].transpose(3, 0, 1, 2),
                               reference["image"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(load(out / "site2/sub-01_T1w_head.nii.gz"), reference["head"][0].numpy())
    sidecar = json.loads((out / "site2/sub-01_T1w.json").read_text())
    assert sidecar["gpuprep_run"]["input_sha256"] == input_hash({"image": str(files[1])})
    assert sidecar["gpuprep_run"]["outputs"] == ["sub-01_T1w.nii.gz", "sub-01_T1w_head.nii.gz"]
    assert [t["name"] for t in sidecar["pipeline"]["transforms"]][0::5] == ["LoadImage", "SaveImage"]
    assert (out / "report.csv").read_text() == "file,step,error\n"
    steps = [name for name, _, _ in summary.slowest_steps(10)]
    assert {"LoadImage", "Orientation+Resample", "ForegroundMask", "save"} <= set(steps)


def test_resume_skips_up_to_date_inputs_and_redoes_changed_inputs_and_pipelines(dataset, tmp_path):
    pipeline, root, files = dataset
    out = tmp_path / "out"
    run_dataset(pipeline, [root], out)
    files[0].touch()  # same content: still up to date
    assert run_dataset(pipeline, [root], out, resume=True).counts == {"done": 0, "skipped": 3, "failed": 0}
    write_head(files[2], 99)  # new content
    (out / "site1/sub-01_T1w_head.nii.gz").unlink()  # a lost output
    summary = run_dataset(pipeline, [root], out, resume=True)
    assert sorted(r.source for r in summary.results if r.status == "done") == ["site1/sub-01_T1w.nii.gz",
                                                                               "site2/sub-02_T1w.nii"]
    assert (out / "site1/sub-01_T1w_head.nii.gz").is_file()
    gp.Compose([*STEPS[:3], gp.ZNormalize("image")]).to_yaml(pipeline)
    assert run_dataset(pipeline, [root], out, resume=True).counts["done"] == 3
    assert run_dataset(pipeline, [root], out).counts["done"] == 3  # without --resume, everything is redone


def test_two_workers_write_the_same_files_as_one(dataset, tmp_path):
    pipeline, root, _ = dataset
    one = run_dataset(pipeline, [root], tmp_path / "one")
    two = run_dataset(pipeline, [root], tmp_path / "two", workers=2)
    assert two.counts["done"] == 3
    assert sorted(r.source for r in two.results) == sorted(r.source for r in one.results)
    for path in (tmp_path / "one").rglob("*.nii.gz"):
        np.testing.assert_array_equal(load(path), load(tmp_path / "two" / path.relative_to(tmp_path / "one")))


def test_a_bad_file_is_reported_and_the_run_goes_on_or_stops_with_raise(dataset, tmp_path):
    pipeline, root, files = dataset
    files[1].write_bytes(files[1].read_bytes()[:200])  # truncated
    summary = run_dataset(pipeline, [root], tmp_path / "out")
    assert summary.counts == {"done": 2, "skipped": 0, "failed": 1}
    rows = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert [(r["file"], r["step"]) for r in rows] == [("site2/sub-01_T1w.nii.gz", "LoadImage")]
    assert "sub-01_T1w.nii.gz" in rows[0]["error"]
    with pytest.raises(DatasetError, match=r"site2/sub-01_T1w.nii.gz: step LoadImage failed"):
        run_dataset(pipeline, [root], tmp_path / "raised", on_error="raise")
    assert "site2/sub-01_T1w.nii.gz" in (tmp_path / "raised" / "report.csv").read_text()


def test_an_image_in_the_output_folder_that_gpuprep_did_not_write_is_never_replaced(dataset, tmp_path):
    pipeline, root, _ = dataset
    foreign = write_head(tmp_path / "out" / "site1" / "sub-01_T1w.nii.gz", 7)  # someone else's file
    digest = file_digest(foreign)
    summary = run_dataset(pipeline, [root], tmp_path / "out")
    assert summary.counts == {"done": 2, "skipped": 0, "failed": 1}
    assert file_digest(foreign) == digest
    rows = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert rows[0]["file"] == "site1/sub-01_T1w.nii.gz" and "gpuprep did not write it" in rows[0]["error"]


def test_csv_and_bids_inputs_mirror_their_trees(tmp_path):
    pipeline = tmp_path / "p.yaml"
    gp.Compose([gp.Flip(["image", "label"], 0)]).to_yaml(pipeline)
    bids = tmp_path / "bids"
    write_head(bids / "sub-01/anat/sub-01_T1w.nii.gz", 1)
    write_head(bids / "sub-01/anat/sub-01_dseg.nii.gz", 2)
    summary = run_dataset(pipeline, [bids], tmp_path / "out", bids_label="dseg")
    assert sorted(summary.results[0].outputs) == ["sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_dseg.nii.gz"]
    label = nib.load(tmp_path / "out/sub-01/anat/sub-01_dseg.nii.gz")
    assert label.get_data_dtype() == np.int16  # a label map: no float conversion
    table = tmp_path / "table.csv"
    table.write_text("image,label,age\nbids/sub-01/anat/sub-01_T1w.nii.gz,bids/sub-01/anat/sub-01_dseg.nii.gz,30\n")
    assert run_dataset(pipeline, [table], tmp_path / "csv").results[0].outputs[0] == \
        "bids/sub-01/anat/sub-01_T1w.nii.gz"


@pytest.mark.parametrize("case, error, match", [
    ("output inside the input folder", ConfigError, "inside the scanned INPUT folder"),
    ("output holds an input", ConfigError, "holds the input"),
    ("colliding outputs", ConfigError, "would both be written to"),
    ("SaveImage in the pipeline", ConfigError, "step 1 is SaveImage"),
    ("unknown key", ConfigError, r"step 1 ZNormalize uses key\(s\) \['t2'\]"),
    ("a text file", ConfigError, "not an image file"),
    ("no image in the folder", DatasetError, "no file with an image extension"),
])
def test_bad_runs_are_refused_before_any_work_with_a_clear_error(tmp_path, case, error, match):
    pipeline = tmp_path / "p.yaml"
    gp.Compose([gp.Flip("image", 0)]).to_yaml(pipeline)
    data = tmp_path / "data"
    a = write_head(data / "a.nii.gz", 1)
    inputs, output = [data], tmp_path / "out"
    if case == "output inside the input folder":
        output = data / "derivatives"
    elif case == "output holds an input":
        inputs, output = [a], tmp_path
    elif case == "colliding outputs":
        write_head(data / "a.nii", 2)
    elif case == "SaveImage in the pipeline":
        gp.Compose([gp.Flip("image", 0), gp.SaveImage("image", tmp_path)]).to_yaml(pipeline)
    elif case == "unknown key":
        gp.Compose([gp.Flip("image", 0), gp.ZNormalize("t2")]).to_yaml(pipeline)
    elif case == "a text file":
        (tmp_path / "notes.txt").write_text("x")
        inputs = [a, tmp_path / "notes.txt"]
    else:
        a.unlink()
    with pytest.raises(error, match=match):
        run_dataset(pipeline, inputs, output)
    assert not output.exists() or output == tmp_path


def test_qc_measures_every_output_and_writes_the_index(dataset, tmp_path):
    pipeline, root, files = dataset
    write_head(files[2], 3, empty=True)  # nothing above the noise: its mask may be empty or tiny
    summary = run_dataset(pipeline, [root], tmp_path / "out", qc=True)
    assert summary.qc_index == tmp_path / "out/qc/index.html" and summary.qc_index.is_file()
    qc = {r.source: r.qc for r in summary.results}
    numbers = qc["site2/sub-01_T1w.nii.gz"]["numbers"]
    image, head = load(tmp_path / "out/site2/sub-01_T1w.nii.gz"), load(tmp_path / "out/site2/sub-01_T1w_head.nii.gz")
    assert numbers["shape"] == "9x8x8" == "x".join(map(str, image.shape)) and numbers["spacing_mm"] == "3x3x3"
    assert (numbers["min"], numbers["max"]) == pytest.approx((image.min(), image.max()))
    assert numbers["mask_volume_ml"] == pytest.approx(head.astype(bool).sum() * 27 / 1000)
    assert (tmp_path / "out/qc" / qc["site1/sub-01_T1w.nii.gz"]["montage"]).is_file()
    resumed = run_dataset(pipeline, [root], tmp_path / "out", qc=True, resume=True)
    assert resumed.counts["skipped"] == 3 and {r.source: r.qc for r in resumed.results} == qc


def test_qc_warns_about_an_empty_mask_and_non_finite_voxels():
    from gpuprep.data.run_qc import qc_numbers

    image = torch.ones(1, 3, 3, 3)
    image[0, 0, 0, 0] = float("nan")
    sample = gp.make_sample({"image": image, "made": torch.zeros(1, 3, 3, 3, dtype=torch.uint8),
                             "given": torch.ones(1, 3, 3, 3, dtype=torch.uint8)}, labels=["made", "given"])
    numbers, warnings = qc_numbers(sample, "image", ["image", "given"])
    assert numbers["mask_key"] == "made" and numbers["mask_volume_ml"] == 0
    assert warnings == ["image has 1 non-finite voxels (NaN or Inf)", "image is constant (1)",
                        "empty mask (made has no voxel)"]


def test_map_jobs_checks_its_arguments_and_stops_the_pool_when_the_caller_stops():
    with pytest.raises(ConfigError, match="--engine must be one of"):
        map_jobs(abs, [1], engine="spark")
    with pytest.raises(ConfigError, match="--workers must be a whole number of at least 1, got 0"):
        map_jobs(abs, [1], workers=0)
    results = map_jobs(abs, range(-50, 0), workers=2)
    assert next(results) > 0
    results.close()  # queued jobs cancelled, the pool shut down
