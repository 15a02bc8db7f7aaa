"""RandLabelsToImage: per-label statistics, batch = singles, replay, skipping, label range, partial volumes,
SynthSeg pipeline."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError, MissingKeyError, TransformError
from gpuprep.functional.augment_intensity import draw_noise
from gpuprep.random import SAMPLE_INDEX_KEY
from gpuprep.transforms.augment.synth import RandLabelsToImage
from tests.conftest import oblique_affine


def _blocks(index: int = 0, shape=(16, 16, 16), labels: int = 4, device="cpu") -> dict:
    """A label map of ``labels`` slabs along D (each label on the same number of voxels), no image."""
    label = (torch.arange(shape[0]) * labels // shape[0]).to(torch.uint8).reshape(-1, 1, 1).expand(shape)
    sample = gp.make_sample({"label": label[None].contiguous().to(device)}, affine=oblique_affine())
    sample[SAMPLE_INDEX_KEY] = index
    return sample


def test_per_label_statistics_match_the_recorded_parameters(device):
    transform = RandLabelsToImage(num_labels=4, mean=(-1.0, 2.0), std=(0.05, 0.5), seed=3)
    sample = _blocks(device=device, shape=(32, 24, 24))
    out = transform(sample)
    params = gp.get_history(out)[-1]["params"]
    assert params["apply"] and len(params["means"]) == len(params["stds"]) == 4
    assert json.loads(json.dumps(params)) == params
    image, label = out["image"].double(), sample["label"]
    for value in range(4):
        voxels = image[label == value]
        n = voxels.numel()
        mean, std = params["means"][value], params["stds"][value]
        assert -1.0 <= mean <= 2.0 and 0.05 <= std <= 0.5
        # 5 standard errors: fails if the wrong table entry, scale or noise were used.
        assert abs(voxels.mean().item() - mean) < 5 * std / math.sqrt(n)
        assert abs(voxels.std().item() / std - 1) < 5 / math.sqrt(2 * n)
    # The noise is the recorded seed's standard normal noise, exactly.
    noise = draw_noise(label[None], [params["noise_seed"]], dtype=torch.float32)[0, 0]
    means = torch.tensor(params["means"], device=device)[label.long()]
    stds = torch.tensor(params["stds"], device=device)[label.long()]
    torch.testing.assert_close(out["image"], means + stds * noise, rtol=1e-6, atol=1e-6)


def test_output_key_metadata_and_input_untouched():
    sample = _blocks()
    snapshot = copy.deepcopy(sample)
    out = RandLabelsToImage(seed=0)(sample)
    assert out["image"].dtype == torch.float32 and out["image"].shape == sample["label"].shape
    assert torch.equal(out["label"], sample["label"])
    assert torch.equal(gp.get_affine(out, "image"), gp.get_affine(sample, "label"))
    assert gp.get_affine(out, "image") is not gp.get_affine(out, "label")  # a copy
    assert out["image_meta"]["original_shape"].tolist() == [16, 16, 16]
    assert "image" not in sample and torch.equal(sample["label"], snapshot["label"]) and sample["history"] == []
    record = gp.get_history(out)[-1]
    assert record["name"] == "RandLabelsToImage" and record["keys"] == ["label"]


def test_existing_image_is_overwritten_and_its_float_dtype_kept():
    sample = _blocks()
    sample["image"] = torch.full((3, 16, 16, 16), 7.0, dtype=torch.float64)
    sample["image_meta"] = gp.make_meta(torch.eye(4))
    out = RandLabelsToImage(seed=0)(sample)
    assert out["image"].shape == (1, 16, 16, 16) and out["image"].dtype == torch.float64
    assert (out["image"] != 7.0).all()
    assert torch.equal(gp.get_affine(out, "image"), gp.get_affine(sample, "label"))


def test_zero_background():
    out = RandLabelsToImage(num_labels=4, zero_background=1.0, mean=(0.5, 1.0), std=(0.1, 0.2), seed=1)(_blocks())
    params = gp.get_history(out)[-1]["params"]
    assert params["zero_background"] and params["means"][0] == 0.0 and params["stds"][0] == 0.0
    assert (out["image"][out["label"] == 0] == 0).all()
    assert (out["image"][out["label"] != 0] != 0).all()
    draws = [gp.get_history(RandLabelsToImage(zero_background=0.5, seed=s)(_blocks()))[-1]["params"]["zero_background"]
             for s in range(40)]
    assert 5 < sum(draws) < 35


def test_batch_equals_singles_and_replay_with_inferred_table_size():
    samples = [_blocks(0, labels=4), _blocks(1, labels=2), _blocks(2, labels=3)]
    transform = RandLabelsToImage(seed=5, std=(0.1, 0.3))
    batch = transform(gp.collate(samples))
    sizes = [len(h[-1]["params"]["means"]) for h in gp.get_history(batch)]
    assert sizes == [4, 2, 3]  # max label + 1, per sample
    for index, sample in enumerate(samples):
        single = transform(sample)
        assert torch.equal(batch["image"][index], single["image"])
        assert gp.get_history(batch)[index] == gp.get_history(single)
        replayed = gp.replay(sample, gp.get_history(single))
        assert torch.equal(replayed["image"], single["image"])
    # A fresh transform with the same seed draws the same; another seed does not.
    assert torch.equal(RandLabelsToImage(seed=5, std=(0.1, 0.3))(samples[0])["image"], batch["image"][0])
    assert not torch.equal(RandLabelsToImage(seed=6, std=(0.1, 0.3))(samples[0])["image"], batch["image"][0])


def test_skipped_samples():
    samples = [_blocks(i) for i in range(6)]
    out = RandLabelsToImage(p=0.0, seed=0)(gp.collate(samples))
    assert torch.equal(out["image"], out["label"].float())  # no image yet: the label values
    assert all(h[-1]["params"] == {"apply": False} for h in gp.get_history(out))
    # With an image already there, skipped samples keep it; the others get a new one.
    with_image = []
    for sample in samples:
        sample = dict(sample, image=torch.full((1, 16, 16, 16), -5.0), image_meta=copy.deepcopy(sample["label_meta"]))
        with_image.append(sample)
    batch = gp.collate(with_image)
    out = RandLabelsToImage(p=0.5, seed=2)(batch)
    applied = [h[-1]["params"]["apply"] for h in gp.get_history(out)]
    assert 0 < sum(applied) < len(applied)
    for index, apply in enumerate(applied):
        single = RandLabelsToImage(p=0.5, seed=2)(with_image[index])
        assert torch.equal(out["image"][index], single["image"])
        assert (out["image"][index] == -5.0).all() != apply
    assert torch.equal(RandLabelsToImage(p=0.0)(batch)["image"], batch["image"])
    # Mixing kept and generated images needs the existing image to have the label's shape.
    batch["image"] = torch.zeros(6, 2, 16, 16, 16)
    with pytest.raises(TransformError, match="'image' has shape"):
        RandLabelsToImage(p=0.5, seed=2)(batch)


def test_label_range_is_checked():
    sample = _blocks(labels=4)
    with pytest.raises(TransformError, match=r"'label' \(sample 0\) has label value 3; labels must be in 0..2"):
        RandLabelsToImage(num_labels=3, seed=0)(sample)
    signed = dict(sample, label=sample["label"].to(torch.int8) - 1)
    with pytest.raises(TransformError, match="has label value -1"):
        RandLabelsToImage(seed=0)(signed)
    with pytest.raises(TransformError, match=r"integer label map or floating label fractions, got dtype torch\.bool"):
        RandLabelsToImage(seed=0)(dict(sample, label=sample["label"] > 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the unchecked (no synchronisation) path is for CUDA")
def test_out_of_range_labels_are_nan_on_cuda():
    sample = _blocks(labels=4, device="cuda")
    out = RandLabelsToImage(num_labels=3, seed=0)(sample)
    assert torch.isnan(out["image"][sample["label"] == 3]).all()
    assert torch.isfinite(out["image"][sample["label"] < 3]).all()


def test_missing_label_key():
    sample = _blocks()
    sample["seg"], sample["seg_meta"] = sample.pop("label"), sample.pop("label_meta")
    with pytest.raises(MissingKeyError, match="label"):
        RandLabelsToImage()(sample)
    assert RandLabelsToImage(allow_missing_keys=True)(sample).keys() == sample.keys()
    out = RandLabelsToImage(label_key="seg", image_key="t1", seed=0)(sample)
    assert out["t1"].shape == sample["seg"].shape and "t1_meta" in out


def test_no_host_synchronisation_on_data(forbid_host_sync):
    """No .item/.cpu/.numpy/.tolist on volumes, with num_labels given."""
    batch = gp.collate([_blocks(i) for i in range(3)])
    transform = RandLabelsToImage(num_labels=4, zero_background=0.5, p=0.7, seed=0)
    forbid_host_sync()
    out = transform(batch)
    assert out["image"].shape == (3, 1, 16, 16, 16)


def test_synthseg_pipeline_on_a_batch():
    phantom = [gp.data.phantom(shape=(24, 24, 24), seed=i) for i in range(2)]
    samples = []
    for index, p in enumerate(phantom):
        samples.append({"label": p["label"], "label_meta": p["label_meta"], "history": [], SAMPLE_INDEX_KEY: index})
    pipeline = gp.Compose([
        gp.RandAffine(["label"], rotate=15, scale=0.1),
        gp.RandElastic(["label"]),
        RandLabelsToImage(num_labels=5, zero_background=0.5),
        gp.RandBiasField("image"),
        gp.RandBlur("image"),
        gp.RandNoise("image"),
        gp.RandGamma("image"),
    ], seed=0)
    batch = pipeline(gp.collate(samples))
    assert batch["image"].shape == (2, 1, 24, 24, 24) and batch["image"].dtype == torch.float32
    assert torch.isfinite(batch["image"]).all()
    assert batch["label"].dtype == torch.uint8 and set(batch["label"].unique().tolist()) <= set(range(5))
    assert not torch.equal(batch["image"][0], batch["image"][1])
    history = gp.get_history(batch)
    assert [r["name"] for r in history[0]] == ["RandAffine", "RandElastic", "RandLabelsToImage", "RandBiasField",
                                                "RandBlur", "RandNoise", "RandGamma"]
    assert torch.equal(gp.get_affine(batch, "image"), gp.get_affine(batch, "label"))
    # Replay from the deformed label map (gp.replay runs spatial steps one by one, unfused).
    for index in range(2):
        deformed = {"label": batch["label"][index], "label_meta": gp.decollate(batch)[index]["label_meta"]}
        replayed = gp.replay(deformed, history[index][2:])
        torch.testing.assert_close(replayed["image"], batch["image"][index], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_key": ""}, "label_key"),
        ({"image_key": 3}, "image_key"),
        ({"image_key": "label"}, "image_key must differ"),
        ({"num_labels": 0}, "num_labels"),
        ({"num_labels": 2.0}, "num_labels"),
        ({"mean": (1.0, 0.0)}, "mean"),
        ({"std": (-0.1, 0.1)}, "std"),
        ({"zero_background": 1.5}, "zero_background"),
        ({"min_separation": -0.1}, "min_separation"),
        ({"min_separation": 0.4, "num_labels": 4}, r"cannot have means 0\.4 apart"),
        ({"min_separation": 0.1, "zero_background": 0.5, "mean": (-1.0, 1.0)}, "mean low >= 0"),
        ({"p": 2.0}, "p must"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RandLabelsToImage(**kwargs)


def _separated_means(transform: RandLabelsToImage, size: int, count: int) -> list[list[float]]:
    return [transform.draw_table(random.Random(seed), size)["means"] for seed in range(count)]


def test_min_separation_matches_rejection_sampling():
    """Separated means are uniform over the separated tables: compare with rejection sampling."""
    scipy_stats = pytest.importorskip("scipy.stats")
    transform = RandLabelsToImage(num_labels=4, mean=(0.0, 1.0), min_separation=0.15)
    drawn = _separated_means(transform, 4, 4000)
    gaps = [min(abs(a - b) for i, a in enumerate(m) for b in m[i + 1:]) for m in drawn]
    assert min(gaps) >= 0.15 - 1e-12 and all(0.0 <= v <= 1.0 for m in drawn for v in m)
    rng, accepted = random.Random(1), []
    while len(accepted) < 4000:
        means = [rng.random() for _ in range(4)]
        if min(abs(a - b) for i, a in enumerate(means) for b in means[i + 1:]) >= 0.15:
            accepted.append(means)
    for label in range(4):  # every label's marginal, and the spread of the table, as rejection gives
        assert scipy_stats.ks_2samp([m[label] for m in drawn], [m[label] for m in accepted]).pvalue > 1e-3
    spread = [max(m) - min(m) for m in drawn]
    assert scipy_stats.ks_2samp(spread, [max(m) - min(m) for m in accepted]).pvalue > 1e-3


def test_min_separation_with_zero_background_keeps_the_background_lowest():
    transform = RandLabelsToImage(mean=(0.0, 1.0), min_separation=0.1, zero_background=1.0)
    for means in _separated_means(transform, 7, 200):
        assert means[0] == 0.0 and min(means[1:]) >= 0.1 - 1e-12
    with pytest.raises(ConfigError, match=r"7 labels cannot have means 0\.2 apart"):
        RandLabelsToImage(min_separation=0.2)(_blocks(labels=7))


# -- partial volumes (floating label fractions) ------------------------------------------------


def _fractions(sample: dict, labels: int = 4) -> torch.Tensor:
    """The one-hot fractions ``[1, labels, D, H, W]`` of a ``_blocks`` label map."""
    return torch.nn.functional.one_hot(sample["label"][0].long(), labels).permute(3, 0, 1, 2)[None].float()


def test_one_hot_fractions_give_the_label_maps_image(device):
    sample = _blocks(device=device)
    transform = RandLabelsToImage(num_labels=4, std=(0.05, 0.2), seed=4)
    hard = transform(sample)
    soft = transform(dict(sample, label=_fractions(sample)[0]))
    assert soft["image"].shape == hard["image"].shape == (1, 16, 16, 16)
    assert gp.get_history(soft)[-1]["params"] == gp.get_history(hard)[-1]["params"]
    torch.testing.assert_close(soft["image"], hard["image"], rtol=0, atol=1e-6)


def test_mixed_voxels_average_the_labels_parameters():
    """Half label 1 and half label 2: mean and std are the averages (checked on 40k voxels)."""
    shape = (40, 32, 32)
    fractions = torch.zeros(3, *shape)
    fractions[1], fractions[2] = 0.5, 0.5
    fractions[:, :, :, :4] = torch.tensor([0.2, 0.0, 0.0]).reshape(3, 1, 1, 1)  # sums to 0.2: the rest is label 0
    out = RandLabelsToImage(num_labels=3, mean=(0.0, 1.0), std=(0.1, 0.3), seed=7)(gp.make_sample({"label": fractions}))
    params = gp.get_history(out)[-1]["params"]
    means, stds = params["means"], params["stds"]
    mixed = out["image"][0, :, :, 4:].double()
    mean, std, n = (means[1] + means[2]) / 2, (stds[1] + stds[2]) / 2, mixed.numel()
    assert abs(mixed.mean().item() - mean) < 5 * std / math.sqrt(n)
    assert abs(mixed.std().item() / std - 1) < 5 / math.sqrt(2 * n)
    padded = out["image"][0, :, :, :4].double()  # all label 0 (fraction 0.2 given + 0.8 left over)
    assert abs(padded.mean().item() - means[0]) < 5 * stds[0] / math.sqrt(padded.numel())
    noise = draw_noise(fractions[None, :1], [params["noise_seed"]], dtype=torch.float32)[0, 0, 0]
    expected = torch.where(torch.arange(32).reshape(1, 1, 32) >= 4,
                           torch.tensor(mean) + torch.tensor(std) * noise,
                           torch.tensor(means[0]) + torch.tensor(stds[0]) * noise)
    torch.testing.assert_close(out["image"][0], expected.float(), rtol=1e-5, atol=1e-5)


def test_fractions_batch_replay_and_skipped_samples():
    samples = [dict(_blocks(i), label=_fractions(_blocks(i))[0] * 0.5 + 0.125) for i in range(4)]
    transform = RandLabelsToImage(num_labels=4, p=0.5, seed=2)
    batch = transform(gp.collate(samples))
    applied = [h[-1]["params"]["apply"] for h in gp.get_history(batch)]
    assert 0 < sum(applied) < len(applied)
    for index, sample in enumerate(samples):
        single = transform(sample)
        assert torch.equal(batch["image"][index], single["image"])
        assert torch.equal(gp.replay(sample, gp.get_history(single))["image"], single["image"])
        if not applied[index]:  # no image before: the expected label value sum_k k f_k
            expected = (torch.arange(4.0).reshape(4, 1, 1, 1) * sample["label"]).sum(0, keepdim=True)
            torch.testing.assert_close(single["image"], expected)


@pytest.mark.parametrize("label, num_labels, match", [
    (torch.full((1, 3, 4, 4, 4), 0.5), 4, "have 3 channels; with num_labels=4"),
    (torch.full((1, 2, 4, 4, 4), -0.1), None, "must lie in \\[0, 1\\], got values from -0.1"),
    (torch.full((1, 2, 4, 4, 4), 1.5), None, "to 1.5"),
])
def test_bad_fractions(label, num_labels, match):
    sample = {"label": label, "label_meta": gp.make_meta(torch.eye(4)), "history": [[]]}
    with pytest.raises(TransformError, match=match):
        RandLabelsToImage(num_labels=num_labels, seed=0)(sample)
