"""Round trips through MONAI (LoadImaged, Orientationd, Spacingd, SaveImaged) mixed with gpuprep steps.

Every chain must leave the voxels at the world positions nibabel gives them in the input file
(see :mod:`tests.data.world_positions`), on LAS, LPS and oblique files, synthetic and real.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai import transforms as monai_transforms
from monai.data import MetaTensor

import gpuprep as gp
from gpuprep.errors import MissingKeyError, TransformError
from tests.data.world_positions import (
    assert_same_voxels_and_grids,
    assert_same_world_values_exact,
    assert_same_world_values_interpolated,
    las_affine,
    write_volume,
)


def _load(path: Path, **kwargs) -> dict:
    return monai_transforms.LoadImaged("image", ensure_channel_first=True, **kwargs)({"image": str(path)})


def _save(data: dict, folder: Path) -> Path:
    monai_transforms.SaveImaged("image", output_dir=folder, output_postfix="out", separate_folder=False,
                                print_log=False)(data)
    (written,) = folder.glob("*_out.nii.gz")
    return written


def test_monai_loadimaged_then_gpuprep_orientation_then_saveimaged_keeps_world_positions(source, tmp_path):
    loaded = _load(source)
    mt = loaded["image"]
    sample = gp.make_sample({"image": mt}, affine=mt.affine)
    reoriented = gp.Orientation("image", "RAS")(sample)
    assert type(reoriented["image"]) is torch.Tensor  # a MetaTensor here would keep the stale LAS .affine
    written = _save(gp.to_monai(reoriented), tmp_path / "out")
    saved = nib.load(written)
    assert_same_world_values_exact(np.asanyarray(saved.dataobj), saved.affine, source)
    if source.name != "oblique.nii.gz" and "aniso" not in source.name:
        assert nib.aff2axcodes(saved.affine) == ("R", "A", "S")


def test_issue_chain_loadimaged_make_sample_orientation_saveimaged_without_adapter(source, tmp_path):
    """The issue's chain, with no gp.to_monai: MONAI's SaveImaged must write the reoriented geometry."""
    mt = _load(source)["image"]
    reoriented = gp.Orientation("image", "RAS")(gp.make_sample({"image": mt}, affine=mt.affine))
    saved = nib.load(_save(reoriented, tmp_path / "out"))
    assert_same_world_values_exact(np.asanyarray(saved.dataobj), saved.affine, source)
    if source.name != "oblique.nii.gz" and "aniso" not in source.name:
        assert nib.aff2axcodes(saved.affine) == ("R", "A", "S")


def test_loadimaged_through_a_fused_gpuprep_chain_then_saveimaged_keeps_world_positions(source, tmp_path):
    """LoadImaged output through a fused Compose (reorient, resample, crop) straight into SaveImaged."""
    pipeline = gp.Compose([gp.Orientation("image", "LPS"), gp.Resample("image", 1.3),
                           gp.CropOrPad("image", (6, 6, 6))])
    saved = nib.load(_save(pipeline(_load(source)), tmp_path / "out"))
    assert_same_world_values_interpolated(np.asanyarray(saved.dataobj), saved.affine, source)


@pytest.mark.parametrize("image_only", [True, False])
def test_gpuprep_transform_on_loadimaged_output_returns_plain_tensor_and_its_affine(source, image_only):
    loaded = _load(source, image_only=image_only)
    out = gp.Orientation("image", "RAS")(loaded)
    assert type(out["image"]) is torch.Tensor  # no MetaTensor left with a stale .affine
    # MONAI's meta dict is written afresh from the new geometry (the loaded one would be stale).
    np.testing.assert_array_equal(out["image_meta_dict"]["affine"], gp.get_affine(out, "image"))
    assert out["image_meta_dict"]["spatial_shape"].tolist() == list(out["image"].shape[1:])
    assert_same_world_values_exact(out["image"], gp.get_affine(out, "image"), source)
    assert gp.get_meta(out, "image")["filename"] == str(source)
    np.testing.assert_allclose(gp.get_meta(out, "image")["original_affine"], nib.load(source).affine, atol=1e-6)


def test_loadimaged_without_ensure_channel_first_gets_a_channel_axis(tmp_path):
    path = write_volume(tmp_path / "las.nii.gz", las_affine())
    loaded = monai_transforms.LoadImaged("image")({"image": str(path)})
    out = gp.Flip("image", 0)(loaded)
    assert out["image"].shape == (1, *nib.load(path).shape)
    assert_same_world_values_exact(out["image"], gp.get_affine(out, "image"), path)


def test_gpuprep_sample_through_monai_spacingd_keeps_the_origin(source):
    sample = gp.LoadImage("image")({"image": str(source)})
    resampled = monai_transforms.Spacingd("image", pixdim=(1.7, 1.3, 2.2), mode="bilinear")(gp.to_monai(sample))
    back = gp.from_monai(resampled)
    assert_same_world_values_interpolated(back["image"], gp.get_affine(back, "image"), source)
    np.testing.assert_allclose(gp.get_affine(back, "image")[:3, 3], resampled["image"].affine[:3, 3], atol=1e-6)


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PIR"])
def test_gpuprep_sample_through_monai_orientationd_keeps_world_positions(source, axcodes):
    sample = gp.LoadImage("image")({"image": str(source)})
    back = gp.from_monai(monai_transforms.Orientationd("image", axcodes=axcodes, labels=None)(gp.to_monai(sample)))
    assert_same_world_values_exact(back["image"], gp.get_affine(back, "image"), source)


def test_mixed_chain_monai_and_gpuprep_keeps_world_positions(source, tmp_path):
    loaded = _load(source)
    resampled = gp.Resample("image", (1.4, 1.1, 1.8), anti_aliasing=False)(loaded)
    reoriented = monai_transforms.Orientationd("image", axcodes="LPI", labels=None)(gp.to_monai(resampled))
    cropped = gp.CropOrPad("image", (9, 12, 10))(gp.from_monai(reoriented))
    gp.SaveImage("image", tmp_path / "out", suffix="_chain")(cropped)
    (written,) = (tmp_path / "out").glob("*_chain.nii.gz")
    saved = nib.load(written)
    assert_same_world_values_interpolated(np.asanyarray(saved.dataobj), saved.affine, source)
    assert [r["name"] for r in gp.get_history(cropped)] == ["Resample", "CropOrPad"]


def test_metatensor_in_lps_space_is_converted_to_ras(tmp_path):
    path = write_volume(tmp_path / "las.nii.gz", las_affine())
    image = nib.load(path)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    mt = MetaTensor(torch.from_numpy(np.asanyarray(image.dataobj))[None], affine=torch.from_numpy(
        ras_to_lps @ image.affine), meta={"space": "LPS", "original_affine": ras_to_lps @ image.affine})
    out = gp.Orientation("image", "RAS")({"image": mt})
    np.testing.assert_allclose(gp.get_meta(out, "image")["original_affine"], image.affine, atol=1e-9)
    assert_same_world_values_exact(out["image"], gp.get_affine(out, "image"), path)


def test_kind_and_history_survive_the_monai_round_trip(tmp_path):
    ct = torch.randint(-1000, 1000, (1, 5, 6, 7), dtype=torch.int16)
    seg = torch.randint(0, 3, (1, 5, 6, 7)).float()  # a float label map: the kind, not the dtype, decides
    sample = gp.make_sample({"ct": ct, "seg": seg}, affine=torch.from_numpy(las_affine()), labels=["seg"])
    sample = gp.Orientation(["ct", "seg"], "RAS")(sample)
    converted = gp.to_monai(sample)
    back = gp.from_monai(monai_transforms.Orientationd(["ct", "seg"], axcodes="RAS", labels=None)(converted))
    assert (gp.get_kind(back, "ct"), gp.get_kind(back, "seg")) == ("image", "label")
    assert gp.get_history(back) == gp.get_history(sample)
    assert_same_voxels_and_grids(back, sample, ("ct", "seg"))
    assert gp.get_kind(gp.from_monai(converted, labels=[]), "seg") == "image"


def test_batch_round_trip_through_monai_keeps_affines_and_kinds():
    affines = [torch.from_numpy(las_affine()), torch.diag(torch.tensor([1.0, 2.0, 3.0, 1.0], dtype=torch.float64))]
    samples = [gp.make_sample({"seg": torch.full((1, 3, 4, 5), i)}, affine=a, labels=["seg"])
               for i, a in enumerate(affines)]
    batch = gp.collate(samples)
    converted = gp.to_monai(batch)
    assert converted["seg"].is_batch and converted["seg"].affine.shape == (2, 4, 4)
    back = gp.from_monai(converted)
    assert torch.equal(back["seg"], batch["seg"])
    torch.testing.assert_close(back["seg_meta"]["affine"], batch["seg_meta"]["affine"])
    assert back["seg_meta"]["kind"] == ["label", "label"] and back["history"] == [[], []]


def test_monai_spacingd_on_a_gpuprep_sample_is_refused_by_the_next_gpuprep_step(tmp_path):
    path = write_volume(tmp_path / "las.nii.gz", las_affine())
    sample = gp.LoadImage("image")({"image": str(path)})
    # Spacingd given a plain tensor assumes an identity affine: its output no longer matches the metadata.
    moved = monai_transforms.Spacingd("image", pixdim=(2.0, 2.0, 2.0))(sample)
    with pytest.raises(TransformError, match=r"'image'.*disagrees.*gp\.to_monai"):
        gp.Flip("image", 0)(moved)
    with pytest.raises(TransformError, match=r"'image'.*disagrees"):
        gp.Compose([gp.Flip("image", 0), gp.Resample("image", 2.0)])(moved)


def test_make_sample_refuses_an_affine_that_disagrees_with_the_metatensor(tmp_path):
    loaded = _load(write_volume(tmp_path / "las.nii.gz", las_affine()))
    with pytest.raises(TransformError, match=r"make_sample: key 'image'.*disagrees"):
        gp.make_sample({"image": loaded["image"]}, affine=torch.eye(4))


def test_plain_tensor_without_metadata_gives_a_clear_error():
    with pytest.raises(MissingKeyError, match=r"key 'image' holds a tensor without gpuprep metadata.*gp\.make_sample"):
        gp.Orientation("image", "RAS")({"image": torch.zeros(1, 4, 4, 4)})
    with pytest.raises(MissingKeyError, match=r"key 'image'.*gp\.from_monai"):
        gp.Compose([gp.Flip("image", 0), gp.Resample("image", 2.0)])({"image": torch.zeros(1, 4, 4, 4)})
    with pytest.raises(MissingKeyError, match=r"key 'image'.*gp\.make_sample"):
        gp.to_monai({"image": torch.zeros(1, 4, 4, 4)}, keys="image")
    with pytest.raises(TransformError, match=r"from_monai: the dict has no MetaTensor values.*set_track_meta"):
        gp.from_monai({"image": torch.zeros(1, 4, 4, 4)})


def test_transform_reading_another_metatensor_key_adopts_it_too(tmp_path):
    path = write_volume(tmp_path / "las.nii.gz", las_affine(), shape=(9, 8, 7))
    image = nib.load(path)
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[2:6, 3:7, 1:4] = 1
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, image.affine), mask_path)
    loaded = monai_transforms.LoadImaged(["image", "mask"], ensure_channel_first=True)(
        {"image": str(path), "mask": str(mask_path)})
    out = gp.CropForeground("image", source_key="mask")(loaded)  # "mask" is read, not transformed
    assert type(out["mask"]) is torch.Tensor and out["image"].shape == (1, 4, 4, 3)
    assert_same_world_values_exact(out["image"], gp.get_affine(out, "image"), path)
    np.testing.assert_allclose(gp.get_affine(out, "mask"), image.affine, atol=1e-6)


def test_loadimaged_channel_last_volume_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7, 2), dtype=np.float32), las_affine()), path)
    loaded = monai_transforms.LoadImaged("image")({"image": str(path)})  # [5, 6, 7, 2]: channels last
    with pytest.raises(TransformError, match=r"Orientation: key 'image'.*\(5, 6, 7, 2\).*EnsureChannelFirstd"):
        gp.Orientation("image", "RAS")(loaded)
    out = gp.Orientation("image", "RAS")(monai_transforms.EnsureChannelFirstd("image")(loaded))
    assert out["image"].shape == (2, 5, 6, 7)
