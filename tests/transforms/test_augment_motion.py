"""RandMotion: TorchIO Motion reference, zero motion, p=0, replay, no host sync, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.transforms.augment.motion import RandMotion

KEYS = ["image", "label"]


def _smooth(n: int = 20) -> torch.Tensor:
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    volume = np.exp(-(x**2 / 0.3 + y**2 / 0.2 + z**2 / 0.4)) + 0.2 * x
    return torch.tensor(volume, dtype=torch.float32)[None]


def _sample(index: int = 0, n: int = 16) -> dict:
    generator = torch.Generator().manual_seed(index)
    image = _smooth(n) + 0.1 * torch.rand((1, n, n, n), generator=generator)
    label = (torch.rand((1, n, n, n), generator=generator) * 3).to(torch.uint8)
    return gp.make_sample({"image": image, "label": label})


@pytest.mark.parametrize("seed", range(4))
def test_matches_torchio_motion(seed):
    """Equal to TorchIO's Motion with the recorded parameters.

    The world origin is put at the grid centre: TorchIO rotates about the world origin, gpuprep
    about the grid centre, and there the two coincide.

    Measured over seeds 0-4 with 3 movements on a 20^3 volume: max abs difference 2.4e-3
    (seed 0, a border sample where SimpleITK and gpuprep's resampler differ), else < 3e-7.
    """
    tio = pytest.importorskip("torchio")
    from torchio.transforms.augmentation.intensity.random_motion import Motion

    image = _smooth()
    affine = np.eye(4)
    affine[:3, 3] = -(np.array(image.shape[1:]) - 1) / 2
    out = RandMotion("image", num_transforms=3, seed=seed)(gp.make_sample({"image": image}, affine=affine))
    params = gp.get_history(out)[-1]["params"]
    assert all(0 < a < b <= 1 for a, b in zip(params["times"], [*params["times"][1:], 1.0]))
    reference = Motion(
        np.array(params["degrees"]), np.array(params["translation"]),
        np.array(params["times"], dtype=np.float32), "linear",
    )(tio.ScalarImage(tensor=image.clone(), affine=affine)).data
    assert (out["image"] - image).abs().max() > 0.1
    torch.testing.assert_close(out["image"], reference, rtol=0, atol=5e-3)


def test_zero_motion_is_identity():
    sample = _sample()
    out = RandMotion(KEYS, degrees=0, translation=0, num_transforms=3, seed=0)(sample)
    expected = torch.fft.ifftn(torch.fft.fftn(sample["image"], dim=(-3, -2, -1)), dim=(-3, -2, -1)).real
    torch.testing.assert_close(out["image"], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out["image"], sample["image"], rtol=0, atol=1e-5)


def test_p_zero_is_identity():
    sample = _sample()
    out = RandMotion(KEYS, p=0.0, seed=0)(sample)
    assert torch.equal(out["image"], sample["image"]) and torch.equal(out["label"], sample["label"])


def test_replay_and_labels():
    samples = [_sample(i) for i in range(3)]
    transform = RandMotion(KEYS, p=0.7, seed=5)
    batch = transform(gp.collate(samples))
    assert torch.equal(batch["label"], gp.collate(samples)["label"])
    assert batch["image"].dtype == torch.float32
    for index, sample in enumerate(samples):
        single = transform(sample)
        torch.testing.assert_close(batch["image"][index], single["image"], rtol=0, atol=1e-5)
        replayed = gp.replay(sample, gp.get_history(single))
        assert torch.equal(replayed["image"], single["image"])


def test_no_host_synchronisation_on_data(forbid_host_sync):
    batch = gp.collate([_sample(i) for i in range(3)])
    transform = RandMotion(KEYS, p=0.7, seed=0)
    forbid_host_sync()
    out = transform(batch)
    assert out["image"].shape == (3, 1, 16, 16, 16)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: RandMotion("image", degrees=(5, 1)), ["RandMotion", "degrees"]),
        (lambda: RandMotion("image", translation="x"), ["RandMotion", "translation"]),
        (lambda: RandMotion("image", num_transforms=0), ["RandMotion", "num_transforms", "0"]),
        (lambda: RandMotion("image", num_transforms=1.5), ["RandMotion", "num_transforms", "1.5"]),
        (lambda: RandMotion("image", p=2), ["RandMotion", "p", "2"]),
    ],
)
def test_bad_arguments(make, words):
    with pytest.raises(ConfigError) as error:
        make()
    for word in words:
        assert word in str(error.value)
