"""The dataset fingerprint: per-file geometry and foreground statistics against NumPy and nibabel, modality rules."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from gpuprep.data import fingerprint as fp
from gpuprep.errors import ConfigError, DatasetError


def save(path, volume, affine):
    nib.save(nib.Nifti1Image(volume, affine), path)
    return str(path)


def ct_volume(rng, shape=(12, 10, 5)):
    """Air (-1000 HU) around a soft-tissue box with a bone block."""
    volume = np.full(shape, -1000, np.int16)
    volume[2:10, 2:8, 1:4] = rng.integers(0, 80, (8, 6, 3))
    volume[3:5, 3:5, 2] = 1200
    return volume


def test_modality_from_the_bids_suffix_and_from_the_intensities():
    assert fp.bids_modality("sub-01_ses-2_CT.nii.gz") == "ct"
    assert fp.bids_modality("sub-01_run-1_FLAIR.nii") == "mri"
    assert fp.bids_modality("image_001.nii.gz") is None
    air = np.concatenate([np.full(10, -1000.0), np.full(989, 30.0), np.full(1, 1200.0)])
    assert fp.intensity_modality(air)[0] == "ct"  # 1 % air, span 2200
    assert fp.intensity_modality(air[1:])[0] == "mri"  # 9 voxels of air: below 1 %
    assert fp.intensity_modality(np.clip(air, -1000, -1))[0] == "mri"  # span 999 < 1000
    assert fp.intensity_modality(np.abs(air))[0] == "mri"  # MRI: nothing negative


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIL", "SAR"])
def test_ras_spacing_and_shape_match_nibabel_canonical(tmp_path, codes):
    from nibabel.orientations import axcodes2ornt, ornt_transform

    ras = nib.Nifti1Image(np.ones((7, 5, 4), np.float32), np.diag([0.7, 1.3, 2.9, 1.0]))
    image = ras.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes))))
    path = save(tmp_path / "x.nii.gz", np.asarray(image.dataobj), image.affine)
    case, _ = fp.fingerprint_case({"image": path}, ["image"], None, samples=4)
    canonical = nib.as_closest_canonical(nib.load(path))
    np.testing.assert_allclose(case["spacing_ras"], canonical.header.get_zooms()[:3], rtol=1e-6)
    np.testing.assert_allclose(case["spacing_ras"], [0.7, 1.3, 2.9], rtol=1e-6)
    assert case["shape_ras"] == list(canonical.shape) == [7, 5, 4]
    assert case["files"]["image"]["orientation"] == codes


def test_case_statistics_are_numpys_inside_the_label_and_the_crops_are_the_boxes(tmp_path, rng):
    volume = ct_volume(rng)
    label = np.zeros(volume.shape, np.uint8)
    label[2:9, 3:7, 1:4] = 1
    label[3:5, 3:5, 2] = 2
    affine = np.diag([0.8, 0.9, 3.0, 1.0])
    record = {"image": save(tmp_path / "sub-01_CT.nii.gz", volume, affine),
              "label": save(tmp_path / "a.nii.gz", label, affine)}
    case, drawn = fp.fingerprint_case(record, ["image"], "label", samples=168)
    entry = case["files"]["image"]
    inside = volume[label > 0].astype(np.float64)
    reference = np.percentile(inside, [0.5, 5, 50, 95, 99.5])
    got = [entry["intensity"][k] for k in ("percentile_00_5", "percentile_05", "percentile_50", "percentile_95",
                                            "percentile_99_5")]
    np.testing.assert_allclose(got, reference)
    assert entry["intensity"]["mean"] == pytest.approx(inside.mean()) and entry["intensity"]["std"] == pytest.approx(
        inside.std())
    assert entry["modality"] == "ct" and "BIDS" in entry["modality_reason"] and entry["dtype"] == "int16"
    assert entry["shape"] == [12, 10, 5] and entry["anisotropy"] == pytest.approx(3.0 / 0.8)
    assert case["crop_shape_ras"] == [8, 6, 3]  # the body, above -500 HU
    assert case["nonzero_shape_ras"] == [12, 10, 5]  # nnU-Net's crop keeps a whole CT
    assert case["label"]["labels"] == [0, 1, 2] and case["label"]["foreground_voxels"] == int((label > 0).sum())
    assert sorted(drawn["image"].tolist()) == sorted(np.repeat(inside, 2).tolist())  # 168 = 2 x 84 voxels


def test_without_labels_the_foreground_is_above_otsu_and_mri_crops_to_the_nonzero_box(tmp_path):
    volume = np.zeros((10, 10, 6), np.float32)
    volume[2:7, 3:9, 1:5] = 100.0
    volume[4, 5, 2] = 300.0
    case, _ = fp.fingerprint_case({"image": save(tmp_path / "brain.nii", volume, np.eye(4))}, ["image"], None)
    entry = case["files"]["image"]
    assert entry["modality"] == "mri" and entry["foreground_voxels"] == 5 * 6 * 4
    assert case["crop_shape_ras"] == case["nonzero_shape_ras"] == [5, 6, 4]
    assert case["relative_size_after_crop"] == pytest.approx(120 / 600)


def test_dataset_statistics_weigh_every_case_equally(tmp_path, monkeypatch):
    monkeypatch.setattr(fp, "SAMPLES_TOTAL", 2 * 24)
    records = []
    for index, (size, value) in enumerate([(4, 10.0), (24, 50.0)]):  # 4 and 24 foreground voxels
        volume = np.zeros((6, 6, 2), np.float32)
        volume.reshape(-1)[:size] = value + np.arange(size)
        label = (volume > 0).astype(np.uint8)
        records.append({"image": save(tmp_path / f"{index}.nii", volume, np.diag([1, 1, 2.0 + index, 1])),
                        "label": save(tmp_path / f"{index}_label.nii", label, np.diag([1, 1, 2.0 + index, 1]))})
    result = fp.fingerprint_dataset(records)
    case_means = [np.mean(10.0 + np.arange(4)), np.mean(50.0 + np.arange(24))]
    assert result["label_key"] == "label" and result["image_keys"] == ["image"]
    assert result["dataset"]["intensity"]["image"]["mean"] == pytest.approx(np.mean(case_means))
    assert result["dataset"]["spacing_ras"]["median"] == [1.0, 1.0, 2.5]
    assert result["dataset"]["labels"] == [0, 1]
    json.dumps(result, allow_nan=False)  # plain JSON types


def test_draw_samples_is_without_replacement_below_the_size(rng):
    values = rng.normal(size=100)
    picked = fp.draw_samples(values, 60, seed=3)
    assert len(set(picked.tolist())) == 60 and set(picked.tolist()) <= set(values.astype(np.float32).tolist())
    assert fp.draw_samples(np.zeros(0), 5, seed=0).size == 0


def test_bad_labels_and_mixed_modalities_are_refused_naming_the_files(tmp_path, rng):
    affine = np.eye(4)
    image = save(tmp_path / "a.nii", ct_volume(rng), affine)
    small = save(tmp_path / "small.nii", np.zeros((4, 4, 4), np.uint8), affine)
    with pytest.raises(DatasetError, match=r"label .*small\.nii: shape .* does not match image .*a\.nii"):
        fp.fingerprint_dataset([{"image": image, "label": small}])
    fractional = save(tmp_path / "frac.nii", np.full((12, 10, 5), 0.5, np.float32), affine)
    with pytest.raises(DatasetError, match=r"frac\.nii: a label map must hold whole numbers"):
        fp.fingerprint_dataset([{"image": image, "label": fractional}])
    mri = save(tmp_path / "b.nii", np.abs(ct_volume(rng)).astype(np.float32), affine)
    with pytest.raises(ConfigError, match=r"files disagree on the modality \(e.g. ct: .*a\.nii, mri: .*b\.nii\)"):
        fp.fingerprint_dataset([{"image": image}, {"image": mri}])
    assert fp.fingerprint_dataset([{"image": image}, {"image": mri}], modality="ct")["dataset"]["modality"] == {
        "image": "ct"}
    with pytest.raises(ConfigError, match="modality of 'image' must be one of"):
        fp.fingerprint_dataset([{"image": image}], modality="pet")
