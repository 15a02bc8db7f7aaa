"""OneOf and SomeOf: per-sample choice, weights, reproducibility, replay, pipeline files."""

from __future__ import annotations

import collections

import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.random import SAMPLE_INDEX_KEY

KEYS = ["image", "label"]


def _batch(size: int) -> dict:
    samples = []
    for index in range(size):
        sample = gp.make_sample({"image": torch.rand(1, 6, 6, 6, generator=torch.Generator().manual_seed(index))})
        sample[SAMPLE_INDEX_KEY] = index
        samples.append(sample)
    return gp.collate(samples)


def _names(out) -> list[tuple[str, ...]]:
    return [tuple(record["name"] for record in history) for history in gp.get_history(out)]


def test_one_of_follows_the_weights_per_sample():
    choose = gp.OneOf([gp.Flip("image", 0), gp.Flip("image", 1), gp.Flip("image", 2)], weights=[1, 0, 3], seed=0)
    counts = collections.Counter(_names(choose(_batch(400))))
    assert set(counts) == {("Flip",)}
    axes = collections.Counter(h[-1]["config"]["axes"] for h in gp.get_history(choose(_batch(400))))
    assert axes.get(1, 0) == 0  # weight 0 is never chosen
    assert 0.65 < axes[2] / 400 < 0.85 and 0.15 < axes[0] / 400 < 0.35  # 3:1, binomial spread


def test_batch_equals_singles_and_replay():
    choose = gp.SomeOf([gp.RandFlip("image", p=1.0), gp.Rotate90("image"), gp.RandAffine("image", rotate=10)],
                       k=(1, 2), seed=3)
    batch = _batch(6)
    out = choose(batch)
    for index, sample in enumerate(gp.decollate(batch)):
        single = choose(sample)
        assert gp.get_history(single) == gp.get_history(out)[index]
        torch.testing.assert_close(single["image"], out["image"][index], rtol=0, atol=1e-6)
        assert torch.equal(gp.replay(sample, gp.get_history(single))["image"], single["image"])


def test_some_of_keeps_listed_order_without_repeats():
    some = gp.SomeOf([gp.ZNormalize("image"), gp.Flip("image", 0), gp.Clip("image", min=0.0)], k=3, seed=0)
    assert set(_names(some(_batch(5)))) == {("ZNormalize", "Flip", "Clip")}


def test_p0_and_pipeline_file():
    choose = gp.OneOf([gp.RandFlip("image", p=1.0)], p=0.0, seed=0)
    batch = _batch(3)
    assert torch.equal(choose(batch)["image"], batch["image"])
    pipeline = gp.Compose([gp.SomeOf([gp.RandFlip("image"), gp.ZNormalize("image")], k=(0, 2))], seed=5)
    rebuilt = gp.Compose.from_yaml(pipeline.to_yaml())
    assert rebuilt.get_config() == pipeline.get_config()
    assert gp.get_history(rebuilt(batch)) == gp.get_history(pipeline(batch))


@pytest.mark.parametrize(
    "make",
    [
        lambda: gp.OneOf([]),
        lambda: gp.OneOf([gp.Flip("image")], weights=[1, 2]),
        lambda: gp.OneOf([gp.Flip("image")], weights=[-1]),
        lambda: gp.OneOf([3]),
        lambda: gp.SomeOf([gp.Flip("image")], k=2),
        lambda: gp.SomeOf([gp.Flip("image")], k=(1, 0)),
    ],
)
def test_bad_arguments(make):
    with pytest.raises(ConfigError):
        make()
