"""Consecutive voxel-wise intensity transforms in one pass: the same results and records as one by one."""

from __future__ import annotations

import pytest
import torch

import gpuprep as gp
from gpuprep.random import SAMPLE_INDEX_KEY
from gpuprep.transforms.fusion import fusion_runs


def _sample(index: int, dtype=torch.float32) -> dict:
    generator = torch.Generator().manual_seed(index)
    image = torch.rand((2, 9, 8, 7), generator=generator) * 3 - 0.5
    label = (image[:1] > 1).to(torch.uint8)
    sample = gp.make_sample({"image": image.to(dtype), "t2": image[:1].flip(1).clone(), "label": label})
    sample[SAMPLE_INDEX_KEY] = index
    return sample


def _chain(p: float = 0.8) -> list:
    return [gp.RandContrast("image", factor=(0.7, 1.3), preserve_range=True, p=p),
            gp.RandBiasField(["image", "t2", "label"], coefficients=0.4, order=2, p=p),
            gp.RandGamma(["image", "t2"], log_gamma=0.3, p=p),
            gp.RandBrightness("image", shift=0.2, p=p),
            gp.RandNoise(["image", "t2"], std=(0.05, 0.1), p=p),
            gp.RandNoise("t2", std=0.1, kind="rician", p=p)]


def _without_fused_marks(history):
    return [[{k: v for k, v in record.items() if k != "fused"} for record in records] for records in history]


def _assert_close(ours, theirs):
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [1.0, 0.6])
def test_fused_equals_one_by_one_and_records_the_same_parameters(p):
    batch = gp.collate([_sample(i) for i in range(3)])
    fused = gp.Compose(_chain(p), seed=3)
    assert [len(run) for run in fused._runs()] == [6]
    out = fused(batch)
    reference = gp.Compose(_chain(p), seed=3, fuse=False)(batch)
    for key in ("image", "t2"):
        _assert_close(out[key], reference[key])
    assert torch.equal(out["label"], batch["label"])  # label maps pass through, by kind
    history = gp.get_history(out)
    assert _without_fused_marks(history) == gp.get_history(reference)
    assert [r["fused"] for r in history[0]] == [{"index": i, "count": 6} for i in range(6)]


def test_replay_is_bit_identical_and_batch_equals_singles():
    samples = [_sample(i) for i in range(3)]
    pipeline = gp.Compose(_chain(), seed=5)
    out = pipeline(gp.collate(samples))
    assert torch.equal(gp.replay(gp.collate(samples), gp.get_history(out))["image"], out["image"])
    for index, sample in enumerate(samples):
        single = pipeline(sample)
        assert torch.equal(single["image"], out["image"][index])
        assert torch.equal(single["t2"], out["t2"][index])
        assert torch.equal(gp.replay(sample, gp.get_history(single))["t2"], single["t2"])


def test_integer_images_become_float32_as_one_by_one():
    sample = _sample(0)
    sample["image"] = (sample["image"] * 100).to(torch.int16)
    out = gp.Compose([gp.RandGamma("image", p=1.0), gp.RandBrightness("image")], seed=0)(sample)
    reference = gp.Compose([gp.RandGamma("image", p=1.0), gp.RandBrightness("image")], seed=0, fuse=False)(sample)
    assert out["image"].dtype == torch.float32
    _assert_close(out["image"], reference["image"])
    skipped = gp.Compose([gp.RandGamma("image", p=0.0), gp.RandBrightness("image", p=0.0)], seed=0)(sample)
    assert skipped["image"].dtype == torch.int16  # no step applied: left as it was


def test_runs_break_at_contrast_and_at_other_transforms():
    steps = [gp.RandGamma("image"), gp.RandContrast("image"), gp.RandNoise("image"), gp.RandBlur("image"),
             gp.RandBrightness("image"), gp.Flip("image", 0), gp.RandBrightness("image")]
    assert [[type(t).__name__ for t in run] for run in fusion_runs(steps)] == [
        ["RandGamma"], ["RandContrast", "RandNoise"], ["RandBlur"], ["RandBrightness"], ["Flip"], ["RandBrightness"]]


def test_missing_keys_and_float64_images():
    sample = _sample(1, dtype=torch.float64)
    del sample["t2"]
    with pytest.raises(gp.errors.MissingKeyError, match="t2"):
        gp.Compose(_chain(), seed=0)(sample)
    keys = ["image", "t2"]
    steps = [gp.RandGamma(keys, allow_missing_keys=True), gp.RandNoise(keys, allow_missing_keys=True)]
    out = gp.Compose(steps, seed=1)(sample)
    reference = gp.Compose(steps, seed=1, fuse=False)(sample)
    assert out["image"].dtype == torch.float64 and torch.equal(out["image"], reference["image"])
