"""Random degradation of resolution: thick slices simulated by downsampling one axis and back."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...functional.axis_operators import apply_axis_operator, axis_operator, chain_operators
from ...random.ranges import uniform_range
from ...validation import spatial_axes
from ..random_base import RandomOptions
from .intensity import _RandomIntensity

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack


class RandAnisotropy(_RandomIntensity):
    """Simulate thick slices: downsample one axis by a random factor (nearest), then back (linear).

    As TorchIO's ``RandomAnisotropy``: the image keeps its shape and grid, but along the chosen
    axis it only holds ``n / factor`` distinct samples, linearly interpolated. The two steps are
    folded into one 1D operator per sample (exactly equal to doing them in turn). Integer label
    maps are left alone (they stay the ground truth at full resolution).

    Parameters
    ----------
    keys:
        Image keys.
    axes:
        Spatial axes one of which is drawn per sample.
    downsampling:
        Range of the factor: a number ``f`` means ``(1, f)``; a pair ``(low, high)`` with ``low >= 1``.
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> x = torch.arange(8.0).reshape(1, 8, 1, 1)
    >>> out = gp.RandAnisotropy("image", axes=0, downsampling=(4, 4), seed=0)(gp.make_sample({"image": x}))
    >>> len(torch.unique(out["image"]))  # 2 distinct slices, linearly blended
    6
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        axes: int | Sequence[int] = (0, 1, 2),
        downsampling: float | Sequence[float] = (1.5, 5.0),
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        axes_tuple = spatial_axes(axes, "RandAnisotropy")
        low, high = uniform_range((1.0, downsampling) if isinstance(downsampling, (int, float)) else downsampling,
                                  "downsampling", "RandAnisotropy", minimum=1.0)
        self.axes = axes_tuple
        self.downsampling = (low, high)

    def draw(self, rng: random.Random) -> dict:
        return {"axis": rng.choice(self.axes), "factor": rng.uniform(*self.downsampling)}

    def augment(self, x: torch.Tensor, params: list[dict]) -> torch.Tensor:
        out = torch.empty_like(x)
        groups: dict[tuple[int, float], list[int]] = {}
        for index, drawn in enumerate(params):
            groups.setdefault((drawn["axis"], drawn["factor"]), []).append(index)
        # One group per distinct (axis, factor): per sample at worst, each a single 1D pass.
        for (axis, factor), indices in groups.items():
            n = x.shape[2 + axis]
            operator = _thick_slices(n, factor)
            part = x[indices]
            out[indices] = apply_axis_operator(part, 2 + axis, operator).to(x.dtype)
        return out


def _thick_slices(n: int, factor: float):
    """Nearest-neighbour downsampling by ``factor`` then linear upsampling back to ``n`` samples."""
    n_down = max(1, round(n / factor))
    down = axis_operator((np.arange(n_down) + 0.5) * n / n_down - 0.5, n, "nearest")
    up = axis_operator((np.arange(n) + 0.5) * n_down / n - 0.5, n_down, "linear")
    return chain_operators(down, up, n)
