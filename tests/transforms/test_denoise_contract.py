"""The transform contract for every denoiser: batch = single calls, labels, purity, replay, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.transforms.denoise import (
    AnisotropicDiffusion,
    GaussianDenoise,
    MedianDenoise,
    NonLocalMeans,
    WaveletDenoise,
)
from gpuprep.transforms.history import replay
from tests.conftest import oblique_affine

FACTORIES = {
    "gaussian": lambda **kw: GaussianDenoise(["image", "label"], sigma=(1.5, 1.0, 2.0), **kw),
    "median": lambda **kw: MedianDenoise(["image", "label"], radius=1, **kw),
    "wavelet": lambda **kw: WaveletDenoise(["image", "label"], wavelet="db2", **kw),
    "diffusion": lambda **kw: AnisotropicDiffusion(["image", "label"], iterations=3, kappa=1.0, **kw),
    "nlmeans": lambda **kw: NonLocalMeans(["image", "label"], patch_size=3, patch_distance=1, **kw),
    "nlmeans-classic": lambda **kw: NonLocalMeans(
        ["image", "label"], patch_size=3, patch_distance=1, h=0.5, fast_mode=False, **kw
    ),
}
NAMES = sorted(FACTORIES)


def _sample(seed: int = 0, spacing=(1.2, 0.9, 2.5), dtype=torch.float32, device="cpu") -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.zeros(2, 12, 13, 14, dtype=torch.float64)
    image[:, 3:9, 4:10, 2:11] = 1.0
    image = (image + 0.3 * torch.randn(image.shape, generator=g, dtype=torch.float64)).to(dtype)
    label = (image[:1] > 0.5).to(torch.int64)
    affine = oblique_affine(spacing=spacing)
    return gp.make_sample({"image": image.to(device), "label": label.to(device)}, affine=affine)


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_device_keys_and_labels(name, device):
    sample = _sample(device=device)
    out = FACTORIES[name]()(sample)
    assert set(out) == set(sample)
    assert out["image"].shape == sample["image"].shape
    assert out["image"].dtype == torch.float32 and out["image"].device.type == device.type
    assert not torch.equal(out["image"], sample["image"])  # it did smooth
    # integer label maps are left alone, not even copied
    assert torch.equal(out["label"], sample["label"]) and out["label"].data_ptr() == sample["label"].data_ptr()
    record = gp.get_history(out)[-1]
    assert record["name"] == type(FACTORIES[name]()).__name__
    json.dumps(gp.get_history(out))  # JSON-friendly


@pytest.mark.parametrize("name", NAMES)
def test_float64_is_kept(name):
    sample = _sample(dtype=torch.float64)
    assert FACTORIES[name]()(sample)["image"].dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_single_calls(name, device):
    """Two samples with different voxel spacings in one batch; tolerance 1e-5 (float32 rounding)."""
    samples = [_sample(0, (1.2, 0.9, 2.5), device=device), _sample(1, (1.0, 1.0, 1.0), device=device)]
    transform = FACTORIES[name]()
    batch_out = transform(gp.collate(samples))
    for index, sample in enumerate(samples):
        single = transform(sample)
        torch.testing.assert_close(batch_out["image"][index], single["image"], rtol=1e-5, atol=1e-5)
        assert gp.get_history(batch_out)[index][-1]["params"] == gp.get_history(single)[-1]["params"]


@pytest.mark.parametrize("name", NAMES)
def test_input_is_not_mutated(name):
    sample = _sample()
    before = {k: v.clone() for k, v in sample.items() if isinstance(v, torch.Tensor)}
    affine = gp.get_affine(sample, "image").clone()
    FACTORIES[name]()(sample)
    for key, value in before.items():
        assert torch.equal(sample[key], value)
    assert torch.equal(gp.get_affine(sample, "image"), affine)
    assert gp.get_history(sample) == []


@pytest.mark.parametrize("name", NAMES)
def test_replay_from_history_gives_the_same_output(name):
    sample = _sample()
    out = FACTORIES[name]()(sample)
    replayed = replay(sample, gp.get_history(out))
    assert torch.equal(replayed["image"], out["image"])
    assert gp.get_history(replayed) == gp.get_history(out)


BAD_ARGUMENTS = [
    (GaussianDenoise, {"sigma": -1.0}, "sigma"),
    (GaussianDenoise, {"sigma": (1.0, 2.0)}, "sigma"),
    (GaussianDenoise, {"sigma": 1.0, "units": "cm"}, "units"),
    (GaussianDenoise, {"sigma": 1.0, "truncate": 0}, "truncate"),
    (GaussianDenoise, {"sigma": 1.0, "mode": "symmetric"}, "mode"),
    (MedianDenoise, {"radius": -1}, "radius"),
    (MedianDenoise, {"radius": 1.5}, "radius"),
    (MedianDenoise, {"radius": 1, "mode": "edge"}, "mode"),
    (MedianDenoise, {"radius": 1, "chunk_mb": 0}, "chunk_mb"),
    (WaveletDenoise, {"method": "SureShrink"}, "method"),
    (WaveletDenoise, {"mode": "garrote"}, "mode"),
    (WaveletDenoise, {"wavelet": "morl"}, "wavelet"),
    (WaveletDenoise, {"wavelet_levels": 0}, "wavelet_levels"),
    (WaveletDenoise, {"sigma": -0.1}, "sigma"),
    (WaveletDenoise, {"rescale_sigma": "yes"}, "rescale_sigma"),
    (AnisotropicDiffusion, {"iterations": 0}, "iterations"),
    (AnisotropicDiffusion, {"kappa": 0.0}, "kappa"),
    (AnisotropicDiffusion, {"gamma": 0.25}, "gamma"),
    (AnisotropicDiffusion, {"option": 1}, "option"),
    (NonLocalMeans, {"patch_size": 4}, "patch_size"),
    (NonLocalMeans, {"patch_distance": -1}, "patch_distance"),
    (NonLocalMeans, {"h": 0.0}, "h"),
    (NonLocalMeans, {"sigma": float("nan")}, "sigma"),
    (NonLocalMeans, {"fast_mode": 1}, "fast_mode"),
]


@pytest.mark.parametrize(("cls", "kwargs", "argument"), BAD_ARGUMENTS)
def test_bad_arguments_raise_config_error(cls, kwargs, argument):
    """The message names the transform, the argument and the bad value."""
    with pytest.raises(ConfigError) as info:
        cls("image", **kwargs)
    message = str(info.value)
    assert cls.__name__ in message and argument in message
    assert repr(kwargs[argument]) in message


def test_labels_only_sample_is_returned_unchanged():
    label = torch.from_numpy(np.random.default_rng(0).integers(0, 3, size=(1, 6, 6, 6)))
    sample = gp.make_sample({"label": label})
    out = GaussianDenoise("label", sigma=1.0)(sample)
    assert torch.equal(out["label"], label) and out["label"].dtype == label.dtype
