"""Random k-space artefacts: references (TorchIO Ghosting/Spike, MONAI GibbsNoise), replay, batching, no host sync."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.random import SAMPLE_INDEX_KEY
from gpuprep.transforms.augment.artifacts import RandGhosting, RandGibbs, RandSpike

KEYS = ["image", "label"]


def _sample(index: int = 0, shape=(10, 12, 9), device="cpu", channels: int = 1, dtype=torch.float32) -> dict:
    generator = torch.Generator().manual_seed(index)
    image = torch.rand((channels, *shape), generator=generator, dtype=torch.float64).to(dtype) + 0.5
    label = (torch.rand((1, *shape), generator=generator) * 3).to(torch.uint8)
    sample = gp.make_sample({"image": image.to(device), "label": label.to(device)})
    sample[SAMPLE_INDEX_KEY] = index
    return sample


FACTORIES = {
    "RandGhosting": lambda **k: RandGhosting(KEYS, num_ghosts=(2, 5), intensity=(0.5, 1.0), restore=0.2, **k),
    "RandSpike": lambda **k: RandSpike(KEYS, num_spikes=(1, 3), intensity=(1.0, 3.0), **k),
    "RandGibbs": lambda **k: RandGibbs(KEYS, alpha=(0.3, 0.8), **k),
}


def _params(out, index=None):
    history = gp.get_history(out)
    return (history if index is None else history[index])[-1]["params"]


# -- behaviour shared by all -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_common_behaviour(name, device):
    """Label untouched, shape/dtype/device kept, JSON records, replay exact, batch == singles."""
    samples = [_sample(i, device=device, channels=2) for i in range(3)]
    transform = FACTORIES[name](seed=3)
    batch = transform(gp.collate(samples))
    assert torch.equal(batch["label"], gp.collate(samples)["label"])
    assert batch["image"].dtype == torch.float32 and batch["image"].device.type == device.type
    assert batch["image"].shape == gp.collate(samples)["image"].shape
    assert not torch.equal(batch["image"], gp.collate(samples)["image"])
    record = gp.get_history(batch)[0][-1]
    assert json.loads(json.dumps(record)) == record
    for index, sample in enumerate(samples):
        single = transform(sample)
        torch.testing.assert_close(batch["image"][index], single["image"], rtol=0, atol=1e-5)
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
    out = FACTORIES[name](p=0.5, seed=1)(gp.collate(samples))
    applied = [h[-1]["params"]["apply"] for h in gp.get_history(out)]
    assert any(applied) and not all(applied)
    for index, flag in enumerate(applied):
        if not flag:
            assert torch.equal(out["image"][index], samples[index]["image"])


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_dtype_kept(name, dtype):
    sample = _sample(dtype=dtype)
    out = FACTORIES[name](seed=0)(sample)
    assert out["image"].dtype == dtype
    assert torch.isfinite(out["image"].float()).all()


# -- references ------------------------------------------------------------------------------


def _torchio_image(image: torch.Tensor):
    tio = pytest.importorskip("torchio")
    return tio.Subject(image=tio.ScalarImage(tensor=image.clone()))


@pytest.mark.parametrize("restore", [0.2, None])
def test_ghosting_matches_torchio(restore):
    """Equals TorchIO's deterministic ``Ghosting`` with the recorded parameters (float32 FFTs: 1e-4 relative)."""
    from torchio.transforms.augmentation.intensity.random_ghosting import Ghosting

    samples = [_sample(i, shape=(10, 12, 9), channels=2) for i in range(6)]
    transform = RandGhosting(KEYS, num_ghosts=(2, 6), axes=(0, 1, 2), intensity=(0.3, 1.0),
                             restore=None if restore is None else (0.0, restore), seed=7)
    out = transform(gp.collate(samples))
    assert len({_params(out, i)["axis"] for i in range(6)}) > 1  # different axes within one batch
    for index, sample in enumerate(samples):
        params = _params(out, index)
        reference = Ghosting(params["num_ghosts"], params["axis"], params["intensity"], params["restore"])(
            _torchio_image(sample["image"]))["image"].data
        scale = reference.abs().max()
        torch.testing.assert_close(out["image"][index], reference, rtol=0, atol=1e-4 * float(scale))


def test_spike_matches_torchio():
    """Equals TorchIO's ``Spike`` with the recorded positions and intensity (1e-4 relative)."""
    from torchio.transforms.augmentation.intensity.random_spike import Spike

    samples = [_sample(i, shape=(9, 12, 10), channels=2) for i in range(4)]
    out = RandSpike(KEYS, num_spikes=(0, 3), intensity=2.0, seed=5)(gp.collate(samples))
    counts = [len(_params(out, i)["positions"]) for i in range(4)]
    assert len(set(counts)) > 1
    for index, sample in enumerate(samples):
        params = _params(out, index)
        positions = np.asarray(params["positions"], dtype=np.float64).reshape(-1, 3)
        reference = Spike(positions, params["intensity"])(_torchio_image(sample["image"]))["image"].data
        scale = reference.abs().max()
        torch.testing.assert_close(out["image"][index], reference, rtol=0, atol=1e-4 * float(scale))
        if counts[index] == 0:
            assert torch.equal(out["image"][index], sample["image"])


def test_gibbs_matches_monai():
    """Equals ``monai.transforms.GibbsNoise(alpha)`` with the recorded alpha (float32: 1e-5 relative)."""
    from monai.transforms import GibbsNoise

    samples = [_sample(i, shape=(10, 12, 9), channels=2) for i in range(4)]
    out = RandGibbs(KEYS, alpha=(0.0, 1.0), seed=2)(gp.collate(samples))
    for index, sample in enumerate(samples):
        alpha = _params(out, index)["alpha"]
        reference = torch.as_tensor(np.asarray(GibbsNoise(alpha)(sample["image"].clone())))
        scale = reference.abs().max()
        torch.testing.assert_close(out["image"][index], reference, rtol=0, atol=1e-5 * float(scale))


# -- host synchronisation and validation -----------------------------------------------------


def test_no_host_synchronisation_on_data(forbid_host_sync):
    """The augmentation never calls .item/.cpu/.numpy/.tolist on volumes."""

    batch = gp.collate([_sample(i) for i in range(3)])
    pipeline = gp.Compose([make(p=0.7) for make in FACTORIES.values()], seed=0)
    forbid_host_sync()
    out = pipeline(batch)
    assert out["image"].shape[0] == 3


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: RandGhosting("image", num_ghosts=-1), ["RandGhosting", "num_ghosts", "-1"]),
        (lambda: RandGhosting("image", num_ghosts=(5, 2)), ["RandGhosting", "num_ghosts", "(5, 2)"]),
        (lambda: RandGhosting("image", num_ghosts=2.5), ["RandGhosting", "num_ghosts", "2.5"]),
        (lambda: RandGhosting("image", axes=3), ["RandGhosting", "axes", "3"]),
        (lambda: RandGhosting("image", axes=()), ["RandGhosting", "axes", "()"]),
        (lambda: RandGhosting("image", intensity=(-1, 1)), ["RandGhosting", "intensity", "(-1, 1)"]),
        (lambda: RandGhosting("image", restore=(0.5, 1.5)), ["RandGhosting", "restore", "1.5"]),
        (lambda: RandSpike("image", num_spikes=-2), ["RandSpike", "num_spikes", "-2"]),
        (lambda: RandSpike("image", intensity=(3, 1)), ["RandSpike", "intensity", "(3, 1)"]),
        (lambda: RandGibbs("image", alpha=(0.2, 1.5)), ["RandGibbs", "alpha", "1.5"]),
        (lambda: RandGibbs("image", alpha=-0.5), ["RandGibbs", "alpha", "-0.5"]),
        (lambda: RandGibbs("image", p=2), ["RandGibbs", "p", "2"]),
    ],
)
def test_bad_arguments(make, words):
    with pytest.raises(ConfigError) as error:
        make()
    for word in words:
        assert word in str(error.value)
