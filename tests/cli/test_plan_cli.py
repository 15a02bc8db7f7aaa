"""`gpuprep plan`: a fingerprint and a pipeline YAML that loads and runs; inputs protected; one-line errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import gpuprep as gp
from gpuprep.cli.main import main
from tests.conftest import file_digest

SLICES = (2.5, 3.0, 3.5)


def write_dataset(root, rng, modality="mri", labels=True):
    """Three anisotropic cases (0.8 x 0.8 mm, 2.5-3.5 mm slices): images ``*_T1w``/``*_CT`` and ``*_dseg`` labels."""
    root.mkdir(parents=True, exist_ok=True)
    suffix = "T1w" if modality == "mri" else "CT"
    for index, slices in enumerate(SLICES):
        volume = np.zeros((16, 14, 5), np.float32) if modality == "mri" else np.full((16, 14, 5), -1000.0, np.float32)
        volume[3:13, 2:12, 1:4] = rng.uniform(100, 300, (10, 10, 3))
        affine = np.diag([0.8, 0.8, slices, 1.0])
        nib.save(nib.Nifti1Image(volume, affine), root / f"sub-{index}_{suffix}.nii.gz")
        if labels:
            nib.save(nib.Nifti1Image((volume > 200).astype(np.uint8), affine), root / f"sub-{index}_dseg.nii.gz")
    return root


def test_plan_writes_a_fingerprint_and_a_pipeline_that_loads_and_runs(tmp_path, rng, capsys):
    data = write_dataset(tmp_path / "data", rng)
    digests = {p: file_digest(p) for p in data.iterdir()}
    plan_path = tmp_path / "work" / "plan.yaml"
    assert main(["plan", str(data), "--pattern", "*_T1w.nii.gz", "--label-pattern", "*_dseg.nii.gz",
                 "-o", str(plan_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    # 3 mm median slices, 3x the in-plane spacing, and a third of the voxels: the 10th percentile, 2.6 mm
    assert "target spacing    0.8 x 0.8 x 2.6 mm" in printed and "ZScoreNormalization (nonzero mask)" in printed
    fingerprint = json.loads((tmp_path / "work" / "fingerprint.json").read_text())
    assert [c["files"]["image"]["spacing"][2] for c in fingerprint["cases"]] == list(SLICES)
    assert fingerprint["label_key"] == "label" and fingerprint["dataset"]["modality"] == {"image": "mri"}
    pipeline = gp.Compose.from_yaml(plan_path)
    sample = gp.LoadImage(["image", "label"], labels="label")(
        {"image": str(data / "sub-1_T1w.nii.gz"), "label": str(data / "sub-1_dseg.nii.gz")})
    out = pipeline(sample)
    assert out["image"].shape == out["label"].shape == (1, 10, 10, 3)
    assert abs(out["image"].mean().item()) < 0.1 and gp.get_affine(out, "image")[2, 2].item() == pytest.approx(2.6)
    assert {p: file_digest(p) for p in data.iterdir()} == digests  # inputs untouched
    assert main(["plan", str(data), "--pattern", "*_T1w.nii.gz", "-o", str(plan_path), "--no-progress"]) == 0  # ours


def test_ct_files_a_csv_table_and_a_bids_root_are_inputs(tmp_path, rng):
    data = write_dataset(tmp_path / "ct", rng, modality="ct")
    files = [str(data / f"sub-{i}_CT.nii.gz") for i in range(3)]
    assert main(["plan", *files, "-o", str(tmp_path / "files.yaml"), "--no-progress"]) == 0
    steps = gp.io.safe_yaml.load_yaml((tmp_path / "files.yaml").read_text())["transforms"]
    assert [s["name"] for s in steps] == ["Orientation", "CropForeground", "Clip", "ScaleIntensityRange", "Resample"]
    table = tmp_path / "cases.csv"
    table.write_text("image,seg\n" + "".join(f"{f},{f.replace('_CT', '_dseg')}\n" for f in files))
    assert main(["plan", str(table), "-o", str(tmp_path / "csv.yaml"), "--fingerprint", str(tmp_path / "csv.json"),
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "csv.json").read_text())["label_key"] == "seg"
    for index in range(3):
        anat = tmp_path / "bids" / f"sub-{index}" / "anat"
        anat.mkdir(parents=True)
        for kind in ("CT", "dseg"):
            (anat / f"sub-{index}_{kind}.nii.gz").write_bytes((data / f"sub-{index}_{kind}.nii.gz").read_bytes())
    assert main(["plan", str(tmp_path / "bids"), "--bids-image", "CT", "--bids-label", "dseg",
                 "-o", str(tmp_path / "bids.yaml"), "--no-progress"]) == 0
    fingerprint = json.loads((tmp_path / "fingerprint.json").read_text())
    assert fingerprint["cases"][0]["files"]["image"]["modality_reason"].startswith("BIDS suffix")
    assert fingerprint["cases"][0]["label"]["path"].endswith("sub-0_dseg.nii.gz")


def test_existing_outputs_are_replaced_only_when_gpuprep_wrote_them_or_with_overwrite(tmp_path, rng, capsys):
    data = write_dataset(tmp_path / "data", rng, labels=False)
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text("my: own notes\n")
    assert main(["plan", str(data), "-o", str(plan_path), "--no-progress"]) == 2
    assert "--output " + str(plan_path) + ": the file exists and gpuprep did not write it; pass --overwrite" in (
        capsys.readouterr().err)
    assert plan_path.read_text() == "my: own notes\n" and not (tmp_path / "fingerprint.json").exists()
    assert main(["plan", str(data), "-o", str(plan_path), "--overwrite", "--no-progress"]) == 0
    assert "transforms" in gp.io.safe_yaml.load_yaml(plan_path.read_text())


@pytest.mark.parametrize(("arguments", "message"), [
    (["{data}/sub-0_T1w.nii.gz", "-o", "{data}/sub-0_T1w.nii.gz"], "the plan must be a .yaml or .yml file"),
    (["{data}/nope.nii.gz", "-o", "{tmp}/p.yaml"], "INPUT {data}/nope.nii.gz: no such file or folder"),
    (["{data}", "-o", "{tmp}/p.yaml", "--fingerprint", "{data}/sub-0_T1w.nii.gz"],
     "the fingerprint must be a .json file"),
    (["{data}", "-o", "{tmp}/p.yaml", "--label-pattern", "*_dseg.nii.gz"], "--label-pattern '*_dseg.nii.gz' needs"),
    (["{data}", "-o", "{tmp}/p.yaml", "--pattern", "*.mgz"], "no image file matching --pattern '*.mgz'"),
    (["{data}", "-o", "{tmp}/p.yaml", "--gpu-memory-gb", "1e-7"], "--gpu-memory-gb 1e-07: too little memory"),
])
def test_bad_arguments_get_one_line_naming_the_argument_and_value(tmp_path, rng, capsys, arguments, message):
    data = write_dataset(tmp_path / "data", rng)
    filled = [a.format(data=data, tmp=tmp_path) for a in arguments]
    assert main(["plan", *filled, "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("gpuprep plan: error: ") and "\n" not in error
    assert message.format(data=data) in error


def test_inputs_and_json_files_gpuprep_did_not_write_are_never_replaced(tmp_path, rng, capsys):
    from gpuprep.cli.plan import check_outputs
    from gpuprep.errors import ConfigError

    data = write_dataset(tmp_path / "data", rng)
    sidecar = data / "sub-0_T1w.json"
    sidecar.write_text('{"RepetitionTime": 2.3}')
    assert main(["plan", str(data / "sub-0_T1w.nii.gz"), "-o", str(tmp_path / "p.yaml"), "--fingerprint",
                 str(sidecar), "--overwrite"]) == 2
    assert "a JSON file that gpuprep did not write is there" in capsys.readouterr().err
    assert sidecar.read_text() == '{"RepetitionTime": 2.3}' and not (tmp_path / "p.yaml").exists()
    image = data / "sub-0_T1w.nii.gz"
    with pytest.raises(ConfigError, match=r"--output .*sub-0_T1w.nii.gz is input .*; choose another path"):
        check_outputs({"--output": image}, [{"image": str(image)}], [], overwrite=True)
    with pytest.raises(SystemExit):
        main(["plan", str(data), "-o", str(tmp_path / "p.yaml"), "--gpu-memory-gb", "-1"])
    assert "--gpu-memory-gb: must be a number of GB above 0, got '-1'" in capsys.readouterr().err
