"""The data model: samples, metadata accessors, collate/decollate (also in a DataLoader)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import gpuprep as gp
from gpuprep.errors import MissingKeyError, TransformError


def _sample(seed: int, shape=(3, 4, 5)) -> dict:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand((1, *shape), generator=generator)
    label = torch.randint(0, 3, (1, *shape), generator=generator, dtype=torch.uint8)
    affine = torch.diag(torch.tensor([1.0 + seed, 2.0, 3.0, 1.0], dtype=torch.float64))
    sample = gp.make_sample({"image": image, "label": label}, affine=affine, filenames={"image": f"s{seed}.nii.gz"})
    sample["subject"] = f"sub-{seed:02d}"
    return sample


def test_make_sample_layout_and_accessors():
    sample = _sample(1)
    affine = gp.get_affine(sample, "image")
    assert affine.dtype == torch.float64 and affine.shape == (4, 4) and affine[0, 0] == 2.0
    meta = gp.get_meta(sample, "image")
    assert meta["filename"] == "s1.nii.gz"
    assert meta["original_shape"].tolist() == [3, 4, 5]
    assert torch.equal(meta["original_affine"], affine)
    assert gp.get_history(sample) == []


def test_get_affine_names_missing_key():
    with pytest.raises(MissingKeyError, match=r"'mask'.*image"):
        gp.get_affine(_sample(0), "mask")


def test_make_sample_rejects_non_4d():
    with pytest.raises(TransformError, match=r"\[C, D, H, W\]"):
        gp.make_sample({"image": torch.zeros(4, 4, 4)})


def test_collate_decollate_round_trip():
    samples = [_sample(i) for i in range(3)]
    batch = gp.collate(samples)
    assert batch["image"].shape == (3, 1, 3, 4, 5)
    assert batch["image_meta"]["affine"].shape == (3, 4, 4)
    assert batch["image_meta"]["filename"] == ["s0.nii.gz", "s1.nii.gz", "s2.nii.gz"]
    assert batch["history"] == [[], [], []]
    for original, back in zip(samples, gp.decollate(batch)):
        assert back.keys() == original.keys()
        assert torch.equal(back["image"], original["image"])
        assert back["label"].dtype == torch.uint8
        assert torch.equal(back["image_meta"]["affine"], original["image_meta"]["affine"])
        assert back["subject"] == original["subject"]


def test_collate_rejects_different_shapes():
    with pytest.raises(TransformError, match=r"'image'.*different shapes"):
        gp.collate([_sample(0), _sample(1, shape=(3, 4, 6))])


def test_batch_transform_equals_single_transforms():
    samples = [_sample(i) for i in range(3)]
    transform = gp.Orientation(["image", "label"], "LPI")
    batched = gp.decollate(transform(gp.collate(samples)))
    for sample, from_batch in zip(samples, batched):
        single = transform(sample)
        assert torch.equal(from_batch["image"], single["image"])
        assert torch.equal(from_batch["label"], single["label"])
        assert gp.get_history(from_batch) == gp.get_history(single)


class _Samples(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> dict:
        return gp.Orientation(["image", "label"], "LAS")(_sample(index))


def test_collate_in_a_dataloader_with_workers():
    loader = DataLoader(_Samples(), batch_size=3, num_workers=2, collate_fn=gp.collate)
    batches = list(loader)
    assert len(batches) == 2
    first = batches[0]
    assert first["image"].shape == (3, 1, 3, 4, 5)
    assert [h[0]["name"] for h in first["history"]] == ["Orientation"] * 3
    expected = _Samples()[4]
    assert torch.equal(gp.decollate(batches[1])[1]["image"], expected["image"])
