"""RescaleIntensity against TorchIO, ScaleIntensityRange against MONAI, Clip against numpy.clip.

Tolerances: RescaleIntensity differs from TorchIO only through the percentiles (histogram vs
``np.percentile``: at most ``2 / 65536`` of the masked intensity range, see test_percentile.py),
so the outputs may differ by ``out_span * (2 / 65536) * range / (high - low)`` (computed per case
from NumPy's percentiles; 1e-4 to 6e-4 for these skewed images), plus 1e-6 of float32 rounding.
ScaleIntensityRange and Clip are fixed formulas: float32 rounding only (``atol=1e-6``; Clip exact).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError, MissingKeyError, TransformError
from gpuprep.transforms.intensity import Clip, RescaleIntensity, ScaleIntensityRange

tio = pytest.importorskip("torchio")
monai_transforms = pytest.importorskip("monai.transforms")

BOUND = 2 / 65536


def _rescale_tolerance(values: torch.Tensor, percentiles, out_span: float) -> float:
    low, high = np.percentile(values.double().numpy(), percentiles)
    return out_span * BOUND * float(values.max() - values.min()) / (high - low) + 1e-6


def _image(seed=0, shape=(1, 14, 16, 12), background=True) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(shape, generator=generator).exp() * 100 + 20  # skewed, positive
    if background:
        image[..., :3, :, :] = 0
    return image


def _brain(shape=(1, 14, 16, 12)) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape[1:]], indexing="ij"))
    return ((grid**2).sum(0) < 0.5).to(torch.uint8)[None]


def _torchio(transform, image, brain=None):
    subject = tio.Subject(image=tio.ScalarImage(tensor=image.clone()))
    if brain is not None:
        subject.add_image(tio.LabelMap(tensor=brain.clone()), "brain")
    return transform(subject)["image"].data


@pytest.mark.parametrize("percentiles", [(0.5, 99.5), (0, 100), (2, 98)])
@pytest.mark.parametrize("mask", [None, "nonzero", "brain"])
def test_rescale_matches_torchio(percentiles, mask, device):
    image, brain = _image(), _brain()
    masking = {"nonzero": lambda x: x != 0}.get(mask, mask)
    reference = _torchio(tio.RescaleIntensity(out_min_max=(-1, 2), percentiles=percentiles, masking_method=masking),
                         image, brain)
    sample = gp.make_sample({"image": image.to(device), "brain": brain.to(device)})
    out = RescaleIntensity("image", percentiles=percentiles, out_range=(-1, 2), mask=mask)(sample)
    assert out["image"].device.type == device.type and out["image"].dtype == torch.float32
    selected = {None: image, "nonzero": image[image != 0], "brain": image[brain.bool()]}[mask]
    atol = _rescale_tolerance(selected, percentiles, 3.0)
    torch.testing.assert_close(out["image"].cpu(), reference.float(), rtol=0, atol=atol)


def test_rescale_without_clip_is_the_same_line():
    image = _image()
    clipped = RescaleIntensity("image", percentiles=(5, 95))(gp.make_sample({"image": image}))["image"]
    free = RescaleIntensity("image", percentiles=(5, 95), clip=False)(gp.make_sample({"image": image}))["image"]
    inside = (free >= 0) & (free <= 1)
    torch.testing.assert_close(free[inside], clipped[inside])
    assert free.min() < 0 and free.max() > 1 and clipped.min() == 0 and clipped.max() == 1


def test_rescale_channel_wise_matches_torchio_per_channel():
    image = torch.cat([_image(0), _image(1) * 3 + 7])
    out = RescaleIntensity("image", channel_wise=True)(gp.make_sample({"image": image}))["image"]
    for channel in range(2):
        reference = _torchio(tio.RescaleIntensity(percentiles=(0.5, 99.5)), image[channel : channel + 1])
        atol = _rescale_tolerance(image[channel], (0.5, 99.5), 1.0)
        torch.testing.assert_close(out[channel : channel + 1], reference.float(), rtol=0, atol=atol)


def test_rescale_constant_image_and_empty_mask_unchanged():
    sample = gp.make_sample({"image": torch.full((1, 4, 4, 4), 3.0), "empty": torch.zeros(1, 4, 4, 4)})
    assert torch.equal(RescaleIntensity("image")(sample)["image"], sample["image"])
    image = _image()
    sample = gp.make_sample({"image": image, "empty": torch.zeros_like(image, dtype=torch.uint8)})
    assert torch.equal(RescaleIntensity("image", mask="empty")(sample)["image"], image)


def test_rescale_batch_equals_single_calls(device):
    samples = [gp.make_sample({"image": _image(seed).to(device) * (seed + 1)}) for seed in range(3)]
    transform = RescaleIntensity("image", mask="nonzero")
    batch = transform(gp.collate(samples))
    for index, sample in enumerate(samples):
        assert torch.equal(batch["image"][index], transform(sample)["image"])


@pytest.mark.parametrize(("a_min", "a_max", "b_min", "b_max", "clip"), [
    (-1000, 1000, 0, 1, True),
    (0, 400, -1, 1, False),
    (50, 10, 0, 1, True),  # reversed input range
    (0, 200, None, None, False),
])
def test_scale_intensity_range_matches_monai(a_min, a_max, b_min, b_max, clip, device):
    image = (_image() * 10 - 1000).to(device)
    reference = monai_transforms.ScaleIntensityRange(a_min, a_max, b_min, b_max, clip=clip)(image.cpu())
    out = ScaleIntensityRange("image", a_min, a_max, b_min, b_max, clip=clip)(gp.make_sample({"image": image}))
    torch.testing.assert_close(out["image"].cpu(), torch.as_tensor(reference).float(), rtol=0, atol=1e-6)


def test_clip_matches_numpy():
    image = _image()
    for low, high in [(10, 200), (None, 50), (30, None)]:
        out = Clip("image", min=low, max=high)(gp.make_sample({"image": image}))["image"]
        np.testing.assert_array_equal(out.numpy(), np.clip(image.numpy(), low, high))


def test_labels_untouched_and_float_dtypes_kept():
    label = torch.randint(0, 300, (1, 6, 6, 6), dtype=torch.int16)
    image64 = _image(shape=(1, 6, 6, 6)).double()
    image16 = _image(shape=(1, 6, 6, 6)).half()
    sample = gp.make_sample({"image": image64, "half": image16, "label": label})
    for transform in [RescaleIntensity(["image", "half", "label"]),
                      ScaleIntensityRange(["image", "half", "label"], 0, 100, 0, 1),
                      Clip(["image", "half", "label"], 0, 100)]:
        out = transform(sample)
        assert torch.equal(out["label"], label)
        assert out["image"].dtype == torch.float64 and out["half"].dtype == torch.float16


def test_missing_keys_and_mask_key():
    sample = gp.make_sample({"image": _image()})
    with pytest.raises(MissingKeyError, match="other"):
        RescaleIntensity(["image", "other"])(sample)
    assert torch.equal(RescaleIntensity(["other"], allow_missing_keys=True)(sample)["image"], sample["image"])
    with pytest.raises(MissingKeyError, match="brain"):
        RescaleIntensity("image", mask="brain")(sample)
    sample["small"] = torch.ones(1, 2, 2, 2, dtype=torch.uint8)
    with pytest.raises(TransformError, match="small"):
        RescaleIntensity("image", mask="small")(sample)


@pytest.mark.parametrize(("factory", "match"), [
    (lambda: RescaleIntensity("image", percentiles=(99, 1)), "percentiles"),
    (lambda: RescaleIntensity("image", percentiles=(-1, 50)), "percentiles"),
    (lambda: RescaleIntensity("image", percentiles=(1, 2, 3)), "percentiles"),
    (lambda: RescaleIntensity("image", out_range=(0, float("nan"))), "out_range"),
    (lambda: RescaleIntensity("image", mask=3), "mask"),
    (lambda: RescaleIntensity("image", clip="yes"), "clip"),
    (lambda: ScaleIntensityRange("image", 5, 5, 0, 1), "a_min and a_max"),
    (lambda: ScaleIntensityRange("image", 0, 1, 0, None), "b_min and b_max"),
    (lambda: ScaleIntensityRange("image", 0, 1, clip=True), "clip"),
    (lambda: ScaleIntensityRange("image", "0", 1), "a_min"),
    (lambda: Clip("image"), "min, max"),
    (lambda: Clip("image", min=3, max=1), "min must be <= max"),
    (lambda: Clip("image", min=True), "min"),
    (lambda: RescaleIntensity([]), "keys"),
])
def test_bad_arguments_raise_config_error(factory, match):
    with pytest.raises(ConfigError, match=match):
        factory()
