"""Random patch swapping (context restoration augmentation)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ...errors import ConfigError
from ...validation import check_int, check_int_or_three
from ..random_base import RandomOptions
from .intensity import _RandomIntensity

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack


class RandSwap(_RandomIntensity):
    """Swap pairs of random patches ``num_iterations`` times, as TorchIO's ``RandomSwap``.

    Swaps are applied one after the other (a later swap may move an already swapped patch); the
    two patches of a swap are never the same, and where they overlap the second patch's original
    voxels win (TorchIO's order). The corner pairs are recorded, so a history
    replays exactly. Label maps (by kind) are left alone.

    Parameters
    ----------
    keys:
        Image keys (all of a sample get the same swaps).
    patch_size:
        Side of the cubic patches in voxels, or three sides.
    num_iterations:
        Number of swaps per sample.
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Reference
    ---------
    L. Chen et al., "Self-supervised learning for medical image analysis using image context
    restoration", Medical Image Analysis 58 (2019).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> x = torch.arange(4.0 ** 3).reshape(1, 4, 4, 4)
    >>> out = gp.RandSwap("image", patch_size=2, num_iterations=3, seed=0)(gp.make_sample({"image": x}))
    >>> len(gp.get_history(out)[-1]["params"]["swaps"]), out["image"].shape
    (3, torch.Size([1, 4, 4, 4]))
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        patch_size: int | Sequence[int] = 15,
        num_iterations: int = 100,
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        self.patch_size = check_int_or_three("RandSwap", "patch_size", patch_size, minimum=1)
        self.num_iterations = check_int("RandSwap", "num_iterations", num_iterations, minimum=0)
        self._shape: tuple[int, ...] = ()  # the image shape, set by draw_params before draw runs

    def draw_params(self, batch, keys):
        shape = tuple(batch[keys[0]].shape[-3:])
        if any(p > n for p, n in zip(self.patch_size, shape)):
            raise ConfigError(f"RandSwap: patch_size {self.patch_size} does not fit in the image shape {shape}")
        self._shape = shape
        return super().draw_params(batch, keys)

    def draw(self, rng: random.Random) -> dict:
        limits = [n - p for n, p in zip(self._shape, self.patch_size)]
        swaps = []
        for _ in range(self.num_iterations):
            first = [rng.randint(0, limit) for limit in limits]
            second = [rng.randint(0, limit) for limit in limits]
            while second == first and any(limits):  # never swap a patch with itself
                second = [rng.randint(0, limit) for limit in limits]
            swaps.append([first, second])
        return {"swaps": swaps}

    def augment(self, x: torch.Tensor, params: list[dict]) -> torch.Tensor:
        out = x.clone()
        size = self.patch_size
        for index, drawn in enumerate(params):  # swaps are sequential by definition
            volume = out[index]
            for first, second in drawn["swaps"]:
                a = (slice(None), *(slice(c, c + s) for c, s in zip(first, size)))
                b = (slice(None), *(slice(c, c + s) for c, s in zip(second, size)))
                # TorchIO's order: the first patch goes to the second place, then the second's
                # original to the first place (which decides overlapping voxels).
                first_patch, second_patch = volume[a].clone(), volume[b].clone()
                volume[b] = first_patch
                volume[a] = second_patch
        return out
