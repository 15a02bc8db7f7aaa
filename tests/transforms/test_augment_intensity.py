"""Random intensity augmentation: references (TorchIO, scipy, MONAI formulas), replay, batching, no host sync."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.functional.augment_intensity import bias_field
from gpuprep.random import SAMPLE_INDEX_KEY
from gpuprep.transforms.augment.intensity import RandBiasField, RandBlur, RandBrightness, RandContrast, RandGamma
from gpuprep.transforms.augment.noise import RandNoise

KEYS = ["image", "label"]


def _sample(index: int = 0, shape=(10, 12, 9), device="cpu", channels: int = 1) -> dict:
    generator = torch.Generator().manual_seed(index)
    image = torch.rand((channels, *shape), generator=generator) + 0.5
    label = (torch.rand((1, *shape), generator=generator) * 3).to(torch.uint8)
    sample = gp.make_sample({"image": image.to(device), "label": label.to(device)})
    sample[SAMPLE_INDEX_KEY] = index
    return sample


FACTORIES = {
    "RandNoise": lambda **k: RandNoise(KEYS, std=(0.05, 0.2), **k),
    "RandRicianNoise": lambda **k: RandNoise(KEYS, std=0.2, kind="rician", **k),
    "RandGamma": lambda **k: RandGamma(KEYS, log_gamma=0.3, **k),
    "RandBiasField": lambda **k: RandBiasField(KEYS, coefficients=0.5, order=3, **k),
    "RandContrast": lambda **k: RandContrast(KEYS, factor=(0.5, 1.5), **k),
    "RandBrightness": lambda **k: RandBrightness(KEYS, shift=0.2, **k),
    "RandBlur": lambda **k: RandBlur(KEYS, std=(0.5, 1.5), **k),
}


def _params(out, index=None):
    history = gp.get_history(out)
    return (history if index is None else history[index])[-1]["params"]


# -- behaviour shared by all -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_common_behaviour(name, device):
    """Label untouched, shape/dtype/device kept, JSON records, replay exact, batch == singles."""
    make = FACTORIES[name]
    samples = [_sample(i, device=device) for i in range(3)]
    transform = make(seed=3)
    batch = transform(gp.collate(samples))
    assert torch.equal(batch["label"], gp.collate(samples)["label"])
    assert batch["image"].dtype == torch.float32 and batch["image"].device.type == device.type
    assert not torch.equal(batch["image"], gp.collate(samples)["image"])
    record = gp.get_history(batch)[0][-1]
    assert json.loads(json.dumps(record)) == record
    for index, sample in enumerate(samples):
        single = transform(sample)
        torch.testing.assert_close(batch["image"][index], single["image"], rtol=0, atol=1e-6)
        assert gp.get_history(batch)[index] == gp.get_history(single)
        replayed = gp.replay(sample, gp.get_history(single))
        assert torch.equal(replayed["image"], single["image"])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_p0_identity_and_partial_p(name):
    sample = _sample()
    out = FACTORIES[name](p=0.0, seed=0)(sample)
    assert torch.equal(out["image"], sample["image"])
    assert _params(out) == {"apply": False}
    samples = [_sample(i) for i in range(8)]
    batch = gp.collate(samples)
    out = FACTORIES[name](p=0.5, seed=1)(batch)
    applied = [p[-1]["params"]["apply"] for p in gp.get_history(out)]
    assert any(applied) and not all(applied)
    for index, apply in enumerate(applied):
        assert torch.equal(out["image"][index], batch["image"][index]) != apply


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_float_dtype_kept(name, dtype):
    sample = _sample()
    sample["image"] = sample["image"].to(dtype)
    out = FACTORIES[name](seed=0)(sample)
    assert out["image"].dtype == dtype
    assert torch.isfinite(out["image"].float()).all()


def test_no_host_synchronisation_on_data(forbid_host_sync):
    """No .item/.cpu/.numpy/.tolist on volumes."""
    batch = gp.collate([_sample(i) for i in range(3)])
    pipeline = gp.Compose([make(p=0.7) for make in FACTORIES.values()], seed=0)
    forbid_host_sync()
    out = pipeline(batch)
    assert out["image"].shape[0] == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandNoise("image", std=-0.1),
        lambda: RandNoise("image", std=(0.2, 0.1)),
        lambda: RandNoise("image", mean="0"),
        lambda: RandNoise("image", kind="poisson"),
        lambda: RandNoise("image", p=2.0),
        lambda: RandGamma("image", log_gamma=-0.3),
        lambda: RandGamma("image", log_gamma=(0.3, -0.3)),
        lambda: RandBiasField("image", coefficients=-1),
        lambda: RandBiasField("image", order=-1),
        lambda: RandBiasField("image", order=2.5),
        lambda: RandContrast("image", factor=(-0.5, 1.0)),
        lambda: RandContrast("image", preserve_range=1),
        lambda: RandBrightness("image", shift=(0.2, 0.1)),
        lambda: RandBlur("image", std=(-1, 1)),
    ],
)
def test_bad_arguments(make):
    with pytest.raises(ConfigError) as error:
        make()
    assert str(error.value).startswith("Rand")  # names the transform


def test_error_message_names_argument_and_value():
    with pytest.raises(ConfigError, match=r"RandNoise: kind must be one of .*'poisson'"):
        RandNoise("image", kind="poisson")
    with pytest.raises(ConfigError, match=r"RandBlur: std must not go below 0.*-1"):
        RandBlur("image", std=(-1, 1))


# -- noise -----------------------------------------------------------------------------------


def test_gaussian_noise_statistics_and_exact_formula(device):
    sample = _sample(shape=(32, 32, 32), device=device)
    out = RandNoise("image", std=(0.05, 0.3), mean=0.1, seed=7)(sample)
    params = _params(out)
    difference = (out["image"] - sample["image"]).double()
    assert abs(difference.mean().item() - 0.1) < 0.03 * params["std"] + 1e-3
    assert abs(difference.std().item() / params["std"] - 1) < 0.02
    generator = torch.Generator(device=device).manual_seed(params["noise_seed"])
    noise = torch.randn(sample["image"].shape, generator=generator, device=device)
    assert torch.equal(out["image"], sample["image"] + (0.1 + params["std"] * noise))


def test_rician_noise_matches_monai_formula(device):
    sample = _sample(shape=(24, 24, 24), device=device)
    out = RandNoise(KEYS, std=(0.2, 0.4), kind="rician", seed=2)(sample)
    params = _params(out)
    generator = torch.Generator(device=device).manual_seed(params["noise_seed"])
    n1, n2 = torch.randn((2, *sample["image"].shape), generator=generator, device=device) * params["std"]
    expected = torch.sqrt((sample["image"] + n1) ** 2 + n2**2)
    torch.testing.assert_close(out["image"], expected, rtol=1e-6, atol=1e-6)
    # On a zero image the magnitude is Rayleigh distributed: E[out^2] = 2 std^2 (1% sampling error here).
    zero = gp.make_sample({"image": torch.zeros(1, 24, 24, 24, device=device)})
    out = RandNoise("image", std=(0.2, 0.4), kind="rician", seed=2)(zero)
    second_moment = (out["image"].double() ** 2).mean().item()
    assert abs(second_moment / (2 * _params(out)["std"] ** 2) - 1) < 0.04


def test_noise_differs_between_keys_and_samples():
    sample = gp.make_sample({"a": torch.zeros(1, 8, 8, 8), "b": torch.zeros(1, 8, 8, 8)})
    out = RandNoise(["a", "b"], std=(0.1, 0.1), seed=0)(sample)
    assert not torch.equal(out["a"], out["b"])
    batch = RandNoise("image", std=(0.1, 0.1), seed=0)(gp.collate([_sample(0), _sample(1)]))
    seeds = [h[-1]["params"]["noise_seed"] for h in gp.get_history(batch)]
    assert seeds[0] != seeds[1]
    # A key's noise does not depend on which other keys are present.
    alone = RandNoise(["a", "b"], std=(0.1, 0.1), seed=0, allow_missing_keys=True)(
        gp.make_sample({"b": torch.zeros(1, 8, 8, 8)}))
    assert torch.equal(alone["b"], out["b"])


# -- gamma -----------------------------------------------------------------------------------


def test_gamma_matches_torchio(device):
    tio = pytest.importorskip("torchio")
    sample = _sample(device=device)
    sample["image"] = sample["image"] - 0.8  # some negative intensities: sign(x) |x|^gamma
    out = RandGamma("image", log_gamma=(-0.5, 0.5), seed=4)(sample)
    gamma = _params(out)["gamma"]
    assert math.exp(-0.5) <= gamma <= math.exp(0.5)
    x = sample["image"].cpu()
    subject = tio.Subject(image=tio.ScalarImage(tensor=x.clone()))
    reference = tio.transforms.augmentation.intensity.random_gamma.Gamma(gamma=gamma)(subject)["image"].data
    torch.testing.assert_close(out["image"].cpu(), reference.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["image"].cpu(), x.sign() * x.abs() ** gamma, rtol=1e-6, atol=1e-7)


# -- bias field ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(9, 12, 7), (1, 6, 5)])
@pytest.mark.parametrize("order", [0, 1, 3])
def test_bias_field_matches_torchio_generate_bias_field(shape, order):
    pytest.importorskip("torchio")
    from torchio.transforms.augmentation.intensity.random_bias_field import BiasField

    out = RandBiasField("image", coefficients=0.5, order=order, seed=order)(_sample(shape=shape))
    coefficients = _params(out)["coefficients"]
    reference = BiasField.generate_bias_field(np.zeros((1, *shape)), order, coefficients)
    field = bias_field(shape, torch.tensor([coefficients]), order)[0, 0]
    np.testing.assert_allclose(field.numpy(), reference, rtol=1e-5, atol=0)
    image = _sample(shape=shape)["image"]
    torch.testing.assert_close(out["image"], image * torch.from_numpy(reference), rtol=1e-5, atol=1e-6)


# -- contrast, brightness, blur --------------------------------------------------------------


def test_contrast_formula_per_channel(device):
    sample = _sample(device=device, channels=2)
    sample["image"][1] *= 10
    out = RandContrast("image", factor=(0.5, 2.0), seed=5)(sample)
    factor = _params(out)["factor"]
    x = sample["image"].double()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out["image"].double(), mean + factor * (x - mean), rtol=1e-5, atol=1e-5)
    kept = RandContrast("image", factor=(1.5, 2.0), preserve_range=True, seed=5)(sample)["image"]
    for channel in range(2):
        assert kept[channel].min() >= sample["image"][channel].min()
        assert kept[channel].max() <= sample["image"][channel].max()


def test_brightness_adds_the_recorded_shift(device):
    sample = _sample(device=device)
    out = RandBrightness(KEYS, shift=(-0.3, 0.3), seed=1)(sample)
    torch.testing.assert_close(out["image"], sample["image"] + _params(out)["shift"], rtol=0, atol=1e-6)
    assert torch.equal(out["label"], sample["label"])


def test_blur_matches_scipy_with_the_recorded_sigma(device):
    samples = [_sample(i, shape=(14, 12, 13), device=device) for i in range(2)]
    out = RandBlur("image", std=(0.3, 2.0), seed=9)(gp.collate(samples))
    for index, sample in enumerate(samples):
        sigma = _params(out, index)["sigma"]
        reference = ndi.gaussian_filter(sample["image"][0].double().cpu().numpy(), sigma)
        np.testing.assert_allclose(out["image"][index, 0].cpu().numpy(), reference, rtol=1e-5, atol=1e-5)
