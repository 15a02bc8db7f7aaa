"""Planning: nnU-Net's rules against a NumPy statement of them and against numbers nnU-Net v2 itself gives.

The reference values marked "nnU-Net" were computed with nnunetv2 2.8.1
(``ExperimentPlanner.determine_fullres_target_spacing``, ``get_plans_for_configuration`` and
``network_topology.get_pool_and_conv_props``), with the axes mapped back to (R, A, S);
``scripts/check_plan_nnunet.py`` recomputes such a comparison end to end.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.data import planning
from gpuprep.errors import ConfigError


def reference_target_spacing(spacings, shapes, threshold=3.0):
    """The rule as nnU-Net's documentation states it, written independently with NumPy."""
    spacings, shapes = np.array(spacings, float), np.array(shapes, float)
    median, size = np.median(spacings, 0), np.median(shapes, 0)
    axis = int(np.argmax(median))
    rest = np.delete(np.arange(3), axis)
    if median[axis] > threshold * median[rest].max() and size[axis] * threshold < size[rest].min():
        median[axis] = max(np.percentile(spacings[:, axis], 10), median[rest].max() + 1e-5)
    return median


@pytest.mark.parametrize(("spacings", "shapes", "expected"), [
    ([[1.0, 1.0, 1.2], [0.9, 1.1, 1.0], [1.0, 1.0, 1.0]], [[100, 100, 100]] * 3, [1.0, 1.0, 1.0]),  # median
    ([[0.8, 0.8, z] for z in (2.5, 3.0, 3.0, 3.5, 4.0, 5.0)], [[64, 64, 16]] * 6, [0.8, 0.8, 2.75]),  # 10th pct
    ([[0.8, 0.8, z] for z in (2.5, 3.0, 3.0, 3.5, 4.0, 5.0)], [[64, 64, 30]] * 6, [0.8, 0.8, 3.25]),  # many slices
    ([[0.7, 0.7, 5.0], [0.75, 0.75, 6.0], [0.8, 0.8, 5.0], [0.7, 0.7, 1.5]],
     [[512, 512, 40], [480, 480, 30], [512, 512, 60], [512, 512, 200]], [0.725, 0.725, 2.55]),  # nnU-Net
    ([[4.0, 1.0, 1.0]] * 3 + [[0.5, 1.0, 1.0]] * 2, [[20, 200, 200]] * 5, [1.00001, 1.0, 1.0]),  # floor: other axes
])
def test_target_spacing_follows_the_median_and_the_anisotropy_rule(spacings, shapes, expected):
    got = planning.target_spacing(spacings, shapes)
    np.testing.assert_allclose(got, reference_target_spacing(spacings, shapes), rtol=1e-9)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize(("spacing", "patch", "strides", "padded", "divisors"), [  # nnU-Net's outputs
    ((3.0, 0.8, 0.8), (20, 64, 64), [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]], [20, 64, 64], [4, 16, 16]),
    ((1, 1, 1), (100, 90, 37), [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]], [112, 96, 40], [16, 16, 8]),
    ((5, 1, 1), (13, 160, 160), [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]], [14, 160, 160],
     [2, 32, 32]),
])
def test_topology_matches_nnunet(spacing, patch, strides, padded, divisors):
    assert planning.pool_topology(spacing, patch) == (strides, padded, divisors)


def test_memory_model_counts_features_times_voxels():
    # Two levels on a 4x4x4 patch: 32 features on 64 voxels, 64 on 8; three classes.
    expected = 2 * 32 * 64 + 2 * 64 * 8 + 3 * 32 * 64 + 3 * 64
    assert planning.feature_map_voxels([4, 4, 4], [[1, 1, 1], [2, 2, 2]], 3) == expected
    strides = planning.pool_topology([1, 1, 1], [128, 128, 128])[0]
    assert planning.feature_map_voxels([128, 128, 128], strides, 3) == 452796416  # nnU-Net's PlainConvUNet


@pytest.mark.parametrize(("spacing", "median", "gb", "patch", "batch"), [  # nnU-Net's 3d_fullres choices
    ([1.0, 1.0, 1.0], [200, 200, 200], 8.0, [128, 128, 128], 2),
    ([0.8, 0.8, 2.75], [64, 64, 18.5], 8.0, [64, 64, 20], 2),
    ([0.725, 0.725, 2.55], [495.5, 495.5, 98], 8.0, [224, 224, 40], 2),
    ([1.5, 0.9, 0.9], [120, 256, 256], 24.0, [112, 256, 256], 2),
    ([1.0, 1.0, 1.0], [160, 192, 160], 4.0, [96, 128, 96], 2),
])
def test_patch_and_batch_size_match_nnunet_and_fit_the_memory(spacing, median, gb, patch, batch):
    cases = 6
    got, divisors, estimate = planning.patch_size(spacing, median, gb)
    assert got == patch
    assert all(p % d == 0 for p, d in zip(got, divisors))
    assert estimate <= planning.REFERENCE_FEATURE_VOXELS * gb / 8
    assert planning.batch_size(estimate, got, median, cases, gb) == batch


def test_more_memory_never_gives_a_smaller_patch():
    sizes = [np.prod(planning.patch_size([0.8, 0.8, 3.0], [300, 300, 90], gb)[0]) for gb in (2, 4, 8, 16, 32)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    with pytest.raises(ConfigError, match="gpu_memory_gb must be a number > 0"):
        planning.plan_dataset({"cases": []}, gpu_memory_gb=0)


def fingerprint(modality, relative_size=1.0, stats=None):
    case = {"spacing_ras": [1.0, 1.0, 2.0], "crop_shape_ras": [10, 8, 6], "nonzero_shape_ras": [10, 8, 6]}
    return {"image_keys": ["image"], "label_key": "label", "cases": [case] * 2,
            "dataset": {"modality": {"image": modality}, "median_relative_size_after_crop": relative_size,
                        "labels": [0, 1], "intensity": {"image": stats or {}}}}


def test_normalisation_schemes_and_the_nonzero_mask_rule():
    assert planning.normalization(fingerprint("mri", 0.7499))["image"]["use_mask_for_norm"] is True
    assert planning.normalization(fingerprint("mri", 0.75))["image"]["use_mask_for_norm"] is False
    stats = {"mean": 40.0, "std": 20.0, "percentile_00_5": -100.0, "percentile_99_5": 300.0}
    ct = planning.normalization(fingerprint("ct", 0.5, stats))["image"]
    assert ct == {"scheme": "CTNormalization", "use_mask_for_norm": False, **stats}
    with pytest.raises(ConfigError, match="standard deviation, which must be > 0"):
        planning.normalization(fingerprint("ct", 1.0, {**stats, "std": 0.0}))


def load(tmp_path, volume, label, affine):
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "label.nii.gz")
    return gp.LoadImage(["image", "label"], labels="label")(
        {"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")})


def test_the_ct_pipeline_loads_from_yaml_and_clips_then_standardises(tmp_path, rng):
    stats = {"mean": 40.0, "std": 20.0, "percentile_00_5": -100.0, "percentile_99_5": 300.0}
    plan = planning.plan_dataset(fingerprint("ct", 1.0, stats))
    assert plan.target_spacing == [1.0, 1.0, 2.0]
    pipeline = gp.Compose.from_yaml(plan.pipeline.to_yaml())
    assert [type(t).__name__ for t in pipeline.transforms] == [
        "Orientation", "CropForeground", "Clip", "ScaleIntensityRange", "Resample"]
    volume = np.full((10, 8, 6), -1000, np.int16)
    volume[1:9, 1:7, 1:5] = rng.integers(-200, 500, (8, 6, 4))
    label = (volume > 100).astype(np.uint8)
    out = pipeline(load(tmp_path, volume, label, np.diag([-1.0, 1.0, 2.0, 1.0])))  # LAS: flipped to RAS
    body = np.flip(volume, 0)[1:9, 1:7, 1:5].astype(np.float64)
    np.testing.assert_allclose(out["image"][0].numpy(), (np.clip(body, -100, 300) - 40) / 20, atol=1e-4)
    assert out["label"].dtype == torch.uint8 and torch.equal(out["label"][0], torch.from_numpy(
        (np.flip(label, 0)[1:9, 1:7, 1:5]).copy()))
    without_label = pipeline(gp.LoadImage("image")({"image": str(tmp_path / "image.nii.gz")}))
    assert without_label["image"].shape == out["image"].shape


def test_the_mri_pipeline_z_scores_the_nonzero_voxels_and_resamples(tmp_path, rng):
    volume = np.zeros((10, 8, 6), np.float32)
    volume[2:8, 2:6, 1:5] = rng.uniform(100, 200, (6, 4, 4))
    sample = load(tmp_path, volume, (volume > 150).astype(np.uint8), np.diag([1.0, 1.0, 2.0, 1.0]))
    out = planning.plan_dataset(fingerprint("mri", 0.5)).pipeline(sample)
    inside = volume[2:8, 2:6, 1:5].astype(np.float64)
    np.testing.assert_allclose(out["image"][0].numpy(), (inside - inside.mean()) / inside.std(), atol=1e-4)
    fine = fingerprint("mri", 0.5)
    fine["cases"] = [{**fine["cases"][0], "spacing_ras": [1.0, 1.0, 1.0]}] * 3
    out = planning.plan_dataset(fine).pipeline(sample)
    assert out["image"].shape == out["label"].shape == (1, 6, 4, 8)  # cropped to 6 x 4 x 4, 2 mm -> 1 mm slices
    assert set(out["label"].unique().tolist()) == {0, 1}
