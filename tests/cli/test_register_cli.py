"""`gpuprep register`: the warped image, transform files SimpleITK reads, a QC PNG and a JSON; paths checked first."""

import json

import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.cli.main import main
from gpuprep.functional.resample import resample
from tests.registration.test_register import AFFINE, blob_head, known_transform


def write_pair(tmp_path, seed=0):
    fixed = blob_head(seed=seed)
    truth = known_transform(seed + 1, "rigid")
    voxel_map = np.linalg.inv(AFFINE) @ np.linalg.inv(truth) @ AFFINE
    moving = resample(torch.from_numpy(fixed)[None, None], voxel_map[None], fixed.shape, mode="linear")[0]
    gp.write_image(tmp_path / "fixed.nii.gz", torch.from_numpy(fixed)[None], AFFINE)
    gp.write_image(tmp_path / "moving.nii.gz", moving, AFFINE)
    return fixed, truth, moving


def test_register_writes_the_warped_image_and_transform_files_that_simpleitk_reads(tmp_path, capsys):
    sitk = pytest.importorskip("SimpleITK")
    fixed, truth, moving = write_pair(tmp_path)
    output = tmp_path / "out" / "moving_in_fixed.nii.gz"
    assert main(["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), str(output),
                 "--model", "rigid", "--metric", "ncc", "--device", "cpu"]) == 0
    assert "level 3/3" in capsys.readouterr().out
    warped, _ = gp.read_image(output)
    ideal = resample(moving[None], (np.linalg.inv(AFFINE) @ truth @ AFFINE)[None], fixed.shape, mode="linear")[0]
    inside = torch.from_numpy(fixed > 0.3)
    assert torch.corrcoef(torch.stack([warped[0][inside], ideal[0][inside]]))[0, 1] > 0.99
    report = json.loads((tmp_path / "out" / "moving_in_fixed.json").read_text())
    assert report["model"] == "rigid" and len(report["loss_per_level"]) == 3
    assert (tmp_path / "out" / "moving_in_fixed_qc.png").stat().st_size > 0
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    for suffix in ("tfm", "mat"):
        transform = sitk.ReadTransform(str(tmp_path / "out" / f"moving_in_fixed_affine.{suffix}"))
        point = np.array([10.0, -5.0, 3.0, 1.0])
        expected = (flip @ np.array(report["matrix_ras"]) @ point)[:3]
        np.testing.assert_allclose(transform.TransformPoint((flip @ point)[:3].tolist()), expected, atol=1e-6)


def test_deformable_writes_one_displacement_field_that_maps_like_the_json_matrix_and_field(tmp_path):
    write_pair(tmp_path, seed=2)
    output = tmp_path / "warped.nii.gz"
    assert main(["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), str(output),
                 "--model", "deformable", "--metric", "mse", "--device", "cpu"]) == 0
    field, affine = gp.io.transform_files.read_displacement_field(tmp_path / "warped_warp.nii.gz")
    assert field.shape == (3, 40, 44, 36) and np.allclose(affine, AFFINE, atol=1e-5)
    assert torch.isfinite(field).all()


def test_a_missing_input_or_a_bad_output_is_refused_before_any_work(tmp_path, capsys):
    write_pair(tmp_path)
    fixed, moving = str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz")
    assert main(["register", fixed, str(tmp_path / "nope.nii.gz"), str(tmp_path / "o.nii.gz")]) == 2
    assert "MOVING image not found" in capsys.readouterr().err
    assert main(["register", fixed, moving, str(tmp_path / "o.txt")]) == 2
    assert "OUTPUT" in capsys.readouterr().err
    for name in ("o_qc.png", "o.json", "o_affine.tfm", "o_affine.mat"):  # nothing written
        assert not (tmp_path / name).exists()
    assert main(["register", fixed, moving, moving]) == 2
    assert "is the MOVING image" in capsys.readouterr().err
    assert main(["register", fixed, moving, str(tmp_path / "o.nii.gz"), "--template", "mni"]) == 2
    assert "takes MOVING OUTPUT with --template, got 3 paths" in capsys.readouterr().err
    assert main(["register", moving, str(tmp_path / "o.nii.gz")]) == 2
    assert "takes FIXED MOVING OUTPUT, got 2 paths" in capsys.readouterr().err


def test_the_shipped_mni_template_is_a_reference_and_a_bar_follows_the_levels(tmp_path, capsys):
    from gpuprep.data.sample_data import sample_brain_paths

    template, meta = gp.read_image(sample_brain_paths()["image"])
    affine = np.asarray(meta["affine"], dtype=np.float64)
    shift = np.eye(4)
    shift[:3, 3] = [4.0, -6.0, 2.0]  # mm
    voxel_map = np.linalg.inv(affine) @ np.linalg.inv(shift) @ affine
    moving = resample(template[None].float(), voxel_map[None], template.shape[1:], mode="linear")[0]
    gp.write_image(tmp_path / "moved.nii.gz", moving, affine)
    output = tmp_path / "in_mni.nii.gz"
    assert main(["register", str(tmp_path / "moved.nii.gz"), str(output), "--template", "mni", "--model", "rigid",
                 "--device", "cpu", "--progress"]) == 0
    captured = capsys.readouterr()
    assert "template mni" in captured.out and "rigid level 3/3" in captured.err
    report = json.loads((tmp_path / "in_mni.json").read_text())
    assert report["fixed"] == "template:mni"
    np.testing.assert_allclose(np.array(report["matrix_ras"])[:3, 3], shift[:3, 3], atol=0.3)
