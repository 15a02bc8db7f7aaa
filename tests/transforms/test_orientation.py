"""Orientation against nibabel's reference reorientation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError, MissingKeyError, TransformError
from tests.conftest import oblique_affine


def _nifti(codes: str, shape=(5, 6, 7), oblique: bool = False, seed: int = 0) -> nib.Nifti1Image:
    """A random image whose voxel axes point along ``codes`` (e.g. 'LPS', 'SRA')."""
    ornt = nib.orientations.axcodes2ornt(tuple(codes))
    affine = np.eye(4)
    affine[:3, :3] = 0
    for axis, (world, flip) in enumerate(ornt):
        affine[int(world), axis] = flip * (1.0 + 0.5 * axis)
    affine[:3, 3] = [10.0, -20.0, 5.0]
    if oblique:
        affine[:3, :3] = _small_rotation() @ affine[:3, :3]
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return nib.Nifti1Image(data, affine)


def _small_rotation() -> np.ndarray:
    a = 0.2
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _sample(img: nib.Nifti1Image, device="cpu") -> dict:
    data = torch.from_numpy(np.asarray(img.dataobj).copy())[None].to(device)
    return gp.make_sample({"image": data}, affine=img.affine)


@pytest.mark.parametrize("codes", ["RAS", "LAS", "LPS", "PIR", "SRA", "ILP"])
@pytest.mark.parametrize("oblique", [False, True])
def test_to_ras_matches_nibabel_canonical(codes, oblique, device):
    img = _nifti(codes, oblique=oblique)
    out = gp.Orientation("image", "RAS")(_sample(img, device))
    reference = nib.as_closest_canonical(img)
    assert out["image"].device.type == device.type
    np.testing.assert_array_equal(out["image"][0].cpu().numpy(), np.asarray(reference.dataobj))
    np.testing.assert_array_equal(gp.get_affine(out, "image").numpy(), reference.affine)
    assert gp.axcodes_of(gp.get_affine(out, "image")) == "RAS"


@pytest.mark.parametrize("codes", ["LAS", "LPS", "PIR", "SRA"])
def test_to_ras_and_back_is_exact(codes):
    sample = _sample(_nifti(codes))
    there = gp.Orientation("image", "RAS")(sample)
    back = gp.Orientation("image", codes)(there)
    assert torch.equal(back["image"], sample["image"])
    assert torch.equal(gp.get_affine(back, "image"), gp.get_affine(sample, "image"))


@pytest.mark.parametrize("codes", ["LAS", "LPS", "PIR", "SRA"])
def test_oblique_to_ras_and_back(codes):
    """Data come back bit for bit; an oblique affine to float64 rounding (1e-12 mm)."""
    img = _nifti(codes)
    img = nib.Nifti1Image(np.asarray(img.dataobj), oblique_affine() @ img.affine)
    sample = _sample(img)
    back = gp.Orientation("image", codes)(gp.Orientation("image", "RAS")(sample))
    assert torch.equal(back["image"], sample["image"])
    torch.testing.assert_close(gp.get_affine(back, "image"), gp.get_affine(sample, "image"), rtol=0, atol=1e-12)


def test_invert_undoes_the_transform():
    sample = _sample(_nifti("PIR"))
    out = gp.Orientation("image", "LPS")(sample)
    undone = gp.invert(gp.collate([out]), "image")
    assert torch.equal(undone["image"][0], sample["image"])
    assert torch.equal(undone["image_meta"]["affine"][0], gp.get_affine(sample, "image"))


def test_world_position_of_every_voxel_is_kept():
    img = _nifti("ASL", oblique=True)
    sample = _sample(img)
    out = gp.Orientation("image", "RAS")(sample)
    # The voxel holding a given value must sit at the same world point before and after.
    before = np.argwhere(np.asarray(img.dataobj) == np.asarray(img.dataobj).max())[0]
    after = np.argwhere(out["image"][0].numpy() == out["image"].max().item())[0]
    world_before = img.affine @ np.append(before, 1)
    world_after = gp.get_affine(out, "image").numpy() @ np.append(after, 1)
    np.testing.assert_allclose(world_before, world_after, atol=1e-9)


def test_batch_equals_single_calls_with_mixed_orientations():
    cube = (6, 6, 6)
    samples = [_sample(_nifti(c, shape=cube, seed=i)) for i, c in enumerate(["LAS", "RAS", "PIR", "LPS"])]
    transform = gp.Orientation("image", "RAS")
    batched = transform(gp.collate(samples))
    for index, sample in enumerate(samples):
        single = transform(sample)
        assert torch.equal(batched["image"][index], single["image"])
        assert torch.equal(batched["image_meta"]["affine"][index], gp.get_affine(single, "image"))
        assert gp.get_history(batched)[index] == gp.get_history(single)


def test_batch_with_incompatible_orientations_raises():
    samples = [_sample(_nifti("RAS", shape=(4, 5, 6))), _sample(_nifti("ARS", shape=(4, 5, 6)))]
    with pytest.raises(TransformError, match="different shapes"):
        gp.Orientation("image", "RAS")(gp.collate(samples))


def test_label_dtype_and_values_kept():
    img = _nifti("LPI")
    labels = torch.randint(0, 4, (1, 5, 6, 7), dtype=torch.uint8)
    sample = gp.make_sample({"image": _sample(img)["image"], "label": labels}, affine=img.affine)
    out = gp.Orientation(["image", "label"], "RAS")(sample)
    assert out["label"].dtype == torch.uint8
    assert torch.equal(torch.unique(out["label"]), torch.unique(labels))


def test_input_not_mutated_and_history_recorded():
    sample = _sample(_nifti("LPS"))
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in sample.items()}
    affine_before = gp.get_affine(sample, "image").clone()
    out = gp.Orientation("image", "RAS")(sample)
    assert torch.equal(sample["image"], before["image"])
    assert torch.equal(gp.get_affine(sample, "image"), affine_before)
    assert gp.get_history(sample) == []
    (record,) = gp.get_history(out)
    assert record["name"] == "Orientation"
    step = record["params"]["image"]
    assert np.array_equal(step["in_affine"], affine_before.numpy())
    assert np.array_equal(step["out_affine"], gp.get_affine(out, "image").numpy())
    assert gp.axcodes_of(np.asarray(step["in_affine"])) == "LPS"


@pytest.mark.parametrize("bad", ["RA", "RAR", "XYZ", 3, "LRS"])
def test_bad_axcodes_rejected(bad):
    with pytest.raises(ConfigError, match="axcodes"):
        gp.Orientation("image", bad)


def test_missing_key():
    sample = _sample(_nifti("RAS"))
    with pytest.raises(MissingKeyError, match="label"):
        gp.Orientation(["image", "label"])(sample)
    out = gp.Orientation(["image", "label"], allow_missing_keys=True)(sample)
    assert "label" not in out


def test_replay_from_history_gives_same_output():
    sample = _sample(_nifti("SPL"))
    out = gp.Compose([gp.Orientation("image", "RAS"), gp.Orientation("image", "LIP")])(sample)
    replayed = gp.replay(sample, gp.get_history(out))
    assert torch.equal(replayed["image"], out["image"])
    assert torch.equal(gp.get_affine(replayed, "image"), gp.get_affine(out, "image"))
