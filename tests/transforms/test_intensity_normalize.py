"""ZNormalize against TorchIO ``ZNormalization`` (default) and MONAI ``NormalizeIntensity(nonzero=True)``.

Tolerance: both are exact formulas; the references compute in float32 with a different
summation order, so ``rtol=1e-5, atol=1e-5`` (z-scores are O(1)).
"""

from __future__ import annotations

import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.transforms.intensity import ZNormalize

tio = pytest.importorskip("torchio")
monai_transforms = pytest.importorskip("monai.transforms")

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _image(seed=0, channels=1, shape=(14, 16, 12)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand((channels, *shape), generator=generator) * 300 + 50
    image[:, :3] = 0  # background
    return image


def _brain(shape=(14, 16, 12)) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij"))
    return ((grid**2).sum(0) < 0.6).to(torch.uint8)[None]


@pytest.mark.parametrize("mask", [None, "nonzero", "brain"])
def test_default_matches_torchio(mask, device):
    image, brain = _image(), _brain()
    masking = {"nonzero": lambda x: x != 0}.get(mask, mask)
    subject = tio.Subject(image=tio.ScalarImage(tensor=image.clone()), brain=tio.LabelMap(tensor=brain.clone()))
    reference = tio.ZNormalization(masking_method=masking)(subject)["image"].data
    sample = gp.make_sample({"image": image.to(device), "brain": brain.to(device)})
    out = ZNormalize("image", mask=mask)(sample)
    assert out["image"].device.type == device.type
    torch.testing.assert_close(out["image"].cpu(), reference, **TOL)


@pytest.mark.parametrize("channel_wise", [False, True])
def test_monai_mode_matches_normalize_intensity_nonzero(channel_wise, device):
    image = _image(channels=2)
    image[1] = image[1] * 0.1 + 5 * (image[1] != 0)
    reference = monai_transforms.NormalizeIntensity(nonzero=True, channel_wise=channel_wise)(image.clone())
    transform = ZNormalize("image", mask="nonzero", unbiased=False, keep_outside=True, channel_wise=channel_wise)
    out = transform(gp.make_sample({"image": image.to(device)}))
    torch.testing.assert_close(out["image"].cpu(), torch.as_tensor(reference), **TOL)
    assert (out["image"][image.to(device) == 0] == 0).all()


def test_statistics_per_sample_in_a_batch(device):
    samples = [gp.make_sample({"image": (_image(seed) * (seed + 1)).to(device)}) for seed in range(3)]
    transform = ZNormalize("image")
    batch = transform(gp.collate(samples))
    for index, sample in enumerate(samples):
        single = transform(sample)["image"]
        torch.testing.assert_close(batch["image"][index], single, rtol=0, atol=1e-6)
        inside = single[samples[index]["image"] != 0]
        assert abs(inside.mean().item()) < 1e-5 and abs(inside.std().item() - 1) < 1e-5


def test_constant_and_empty_masks():
    constant = gp.make_sample({"image": torch.full((1, 4, 4, 4), 5.0)})
    assert torch.equal(ZNormalize("image", mask=None)(constant)["image"], torch.zeros(1, 4, 4, 4))  # centred only
    zeros = gp.make_sample({"image": torch.zeros(1, 4, 4, 4)})
    assert torch.equal(ZNormalize("image")(zeros)["image"], zeros["image"])  # empty nonzero mask: unchanged


def test_labels_untouched_dtype_kept_input_not_mutated():
    label = torch.randint(0, 4, (1, 14, 16, 12), dtype=torch.uint8)
    image = _image().double()
    sample = gp.make_sample({"image": image, "label": label})
    out = ZNormalize(["image", "label"])(sample)
    assert torch.equal(out["label"], label) and out["image"].dtype == torch.float64
    assert torch.equal(sample["image"], _image().double()) and sample["history"] == []


def test_replay_gives_the_same_output():
    sample = gp.make_sample({"image": _image(), "brain": _brain()})
    out = ZNormalize("image", mask="brain")(sample)
    assert gp.get_history(out)[-1]["params"] == {}
    assert torch.equal(gp.replay(sample, gp.get_history(out))["image"], out["image"])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"mask": ""}, "mask"),
    ({"mask": 1}, "mask"),
    ({"unbiased": 1}, "unbiased"),
    ({"keep_outside": None}, "keep_outside"),
    ({"channel_wise": "no"}, "channel_wise"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ZNormalize("image", **kwargs)
