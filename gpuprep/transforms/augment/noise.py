"""Random voxel noise (Gaussian or Rician), drawn on the data's device and replayable bit for bit."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...errors import ConfigError
from ...functional.augment_intensity import apply_noise, draw_noise
from ...functional.intensity_chain import VoxelStep
from ...random.ranges import uniform_range
from ..random_base import RandomOptions
from .intensity import _applied, _RandomIntensity

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack

__all__ = ["RandNoise"]

_NOISE_KINDS = ("gaussian", "rician")


class RandNoise(_RandomIntensity):
    """Add random noise: Gaussian ``x + N(mean, std)`` or Rician (MRI magnitude) noise.

    Each sample draws ``std ~ U(std range)`` and a 63-bit ``noise_seed`` (both recorded). The
    voxel noise is drawn on the data's device by one ``torch.randn`` per sample and key from
    ``torch.Generator(device=x.device).manual_seed(noise_seed + k)``, ``k`` the key's position in
    ``keys``: replay gives bit-identical noise on the same device and torch version, different
    keys get independent noise, and a sample's noise does not depend on its batch. Rician noise is
    ``sqrt((x + g1)^2 + g2^2)`` with ``g1, g2 ~ N(mean, std)`` independent. Float16 images get
    float32 noise and are computed in float32.

    Parameters
    ----------
    keys:
        Image keys; label maps (by kind, see gp.get_kind) are left alone.
    std:
        Range of the noise standard deviation: a number ``s`` means ``(0, s)``, or a pair
        ``(low, high)`` with ``low >= 0``; in the image's intensity units.
    mean:
        Mean of the noise (a fixed number).
    kind:
        ``"gaussian"`` or ``"rician"``.
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Reference
    ---------
    MONAI ``RandGaussianNoise(mean, std)`` / ``RandRicianNoise(mean, std)`` (with ``std`` drawn
    from ``(0, std)`` as their ``sample_std=True``); TorchIO ``RandomNoise(mean, std)``.
    H. Gudbjartsson and S. Patz, "The Rician distribution of noisy MRI data", MRM 1995.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.zeros(1, 16, 16, 16)})
    >>> out = RandNoise("image", std=(0.1, 0.1), seed=0)(s)
    >>> round(out["image"].std().item(), 1)
    0.1
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        std: float | Sequence[float] = (0.0, 0.1),
        mean: float = 0.0,
        kind: str = "gaussian",
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        self.std = uniform_range(std, "std", "RandNoise", minimum=0.0)
        if not isinstance(mean, (int, float)) or isinstance(mean, bool) or mean != mean or abs(mean) == float("inf"):
            raise ConfigError(f"RandNoise: mean must be a finite number, got {mean!r}")
        self.mean = float(mean)
        if kind not in _NOISE_KINDS:
            raise ConfigError(f"RandNoise: kind must be one of {_NOISE_KINDS}, got {kind!r}")
        self.kind = kind

    def draw(self, rng: random.Random) -> dict:
        return {"std": rng.uniform(*self.std), "noise_seed": rng.getrandbits(63)}

    voxelwise = True

    def augment_key(self, key, x, params):
        seeds = self._noise_seeds(key, params)
        noise = draw_noise(x, seeds, count=2 if self.kind == "rician" else 1)
        means = [self.mean] * len(params)
        return apply_noise(x, noise, means, [p["std"] for p in params], self.kind)

    def _noise_seeds(self, key: str, params: list[dict]) -> list[int]:
        position = self.keys.index(key)  # each key its own noise
        return [(p.get("noise_seed", 0) + position) % 2**63 for p in params]

    def voxel_step(self, key, params):
        numbers = np.column_stack([[self.mean] * len(params), self._numbers(params, "std")])
        kind = "noise" if self.kind == "gaussian" else "rician"
        return VoxelStep(kind, _applied(params), numbers, noise_seeds=self._noise_seeds(key, params))
