"""Random MRI k-space artefacts: ghosting, spikes and Gibbs ringing.

Each transform draws a few numbers per sample (recorded in the history, so a run replays exactly),
shares them between the sample's keys and channels, changes intensity images only (label maps, by
kind, pass through untouched) and keeps the input's dtype and device (an integer image becomes
float32). The whole batch goes
through one 3D FFT (:mod:`gpuprep.functional.kspace`); samples skipped by ``p`` are not computed.
Nothing is read back from the volumes to the host.

Differences from TorchIO's random transforms: one draw per sample for all its keys (TorchIO draws
per image key), anatomical axis names are not accepted, and a single integer ``n`` for a count
means exactly ``n`` (TorchIO: uniform in ``0..n``); give ``(0, n)`` for TorchIO's behaviour.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...errors import ConfigError
from ...functional.kspace import ghosting, gibbs_lowpass, spike
from ...random.ranges import symmetric_range, uniform_range
from ...validation import spatial_axes
from ..random_base import RandomOptions
from .intensity import _RandomIntensity

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack

__all__ = ["RandGhosting", "RandGibbs", "RandSpike"]


def _count_range(owner: str, name: str, value) -> tuple[int, int]:
    """``n`` -> ``(n, n)``; ``(a, b)`` integers with ``0 <= a <= b``."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not (
        isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in pair) and 0 <= pair[0] <= pair[1]
    ):
        raise ConfigError(
            f"{owner}: {name} must be an integer >= 0 or a pair of integers (low, high) with 0 <= low <= high, "
            f"got {value!r}"
        )
    return int(pair[0]), int(pair[1])


class RandGhosting(_RandomIntensity):
    """Add MRI ghosting: periodic k-space planes along one axis attenuated (TorchIO's RandomGhosting).

    Per sample: a number of ghosts ``n``, one axis among ``axes``, an ``intensity`` and a
    ``restore`` fraction are drawn (and recorded); in the centred spectrum every ``n``-th plane
    along the axis is multiplied by ``1 - intensity``, except the central band of
    ``round(restore * size)`` planes (only the central plane when ``restore`` is None), and the
    image is the real part of the inverse FFT
    (:func:`gpuprep.functional.kspace.ghosting`). ``n = 0`` or ``intensity = 0`` leaves the
    sample unchanged.

    Parameters
    ----------
    keys:
        Image keys; label maps (by kind, see gp.get_kind) are left alone.
    num_ghosts:
        Number of ghosts: an integer ``n`` (exactly ``n``) or a pair ``(low, high)`` (uniform integer).
    axes:
        Spatial axis (0, 1, 2 for D, H, W) or axes to choose one from, uniformly per sample.
    intensity:
        Artefact strength range: a number ``s`` means ``(0, s)``, or a pair; ``>= 0``.
    restore:
        Fraction of the k-space centre (along the axis) kept unchanged: a number ``r`` means
        ``(0, r)``, or a pair within ``[0, 1]``; None keeps the central plane only.
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Reference
    ---------
    ``torchio.RandomGhosting(num_ghosts, axes, intensity, restore)``; the output equals
    TorchIO's ``Ghosting(num_ghosts, axis, intensity, restore)`` with the recorded parameters.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 8, 8, 8)})
    >>> out = RandGhosting("image", num_ghosts=4, axes=1, seed=0)(s)
    >>> params = gp.get_history(out)[-1]["params"]
    >>> params["num_ghosts"], params["axis"], out["image"].shape
    (4, 1, torch.Size([1, 8, 8, 8]))
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        num_ghosts: int | Sequence[int] = (4, 10),
        axes: int | Sequence[int] = (0, 1, 2),
        intensity: float | Sequence[float] = (0.5, 1.0),
        restore: float | Sequence[float] | None = 0.02,
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        self.num_ghosts = _count_range("RandGhosting", "num_ghosts", num_ghosts)
        self.axes = [int(a) for a in spatial_axes(axes, "RandGhosting")]
        self.intensity = uniform_range(intensity, "intensity", "RandGhosting", minimum=0.0)
        if restore is None:
            self.restore = None
        else:
            self.restore = uniform_range(restore, "restore", "RandGhosting", minimum=0.0)
            if self.restore[1] > 1.0:
                raise ConfigError(f"RandGhosting: restore must lie within [0, 1], got {restore!r}")

    def draw(self, rng: random.Random) -> dict:
        return {
            "num_ghosts": rng.randint(*self.num_ghosts),
            "axis": self.axes[rng.randrange(len(self.axes))],
            "intensity": rng.uniform(*self.intensity),
            "restore": None if self.restore is None else rng.uniform(*self.restore),
        }

    def augment(self, x, params):
        return ghosting(
            x,
            [p["num_ghosts"] for p in params],
            [p["axis"] for p in params],
            [p["intensity"] for p in params],
            [p["restore"] for p in params],
        )


class RandSpike(_RandomIntensity):
    """Add MRI spike (herringbone) artefacts: bright k-space points (TorchIO's RandomSpike).

    Per sample: ``n`` spike positions, uniform in ``[0, 1)^3`` relative to the grid, and an
    ``intensity`` are drawn (and recorded); at each position in turn the centred spectrum of
    each channel gets ``intensity`` times its current maximum modulus added, and the image is the
    real part of the inverse FFT (:func:`gpuprep.functional.kspace.spike`). Stripes appear
    across the whole image. No spikes or ``intensity = 0`` leaves the sample unchanged.

    Parameters
    ----------
    keys:
        Image keys; label maps (by kind, see gp.get_kind) are left alone.
    num_spikes:
        Number of spikes: an integer ``n`` (exactly ``n``) or a pair ``(low, high)`` (uniform integer).
    intensity:
        Range of the spike-to-maximum ratio: a number ``r`` means ``(-r, r)``, or a pair.
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Reference
    ---------
    ``torchio.RandomSpike(num_spikes, intensity)``; the output equals TorchIO's
    ``Spike(spikes_positions, intensity)`` with the recorded parameters.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 8, 8, 8)})
    >>> out = RandSpike("image", num_spikes=2, intensity=(1, 3), seed=0)(s)
    >>> len(gp.get_history(out)[-1]["params"]["positions"])
    2
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        num_spikes: int | Sequence[int] = 1,
        intensity: float | Sequence[float] = (1.0, 3.0),
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        self.num_spikes = _count_range("RandSpike", "num_spikes", num_spikes)
        self.intensity = symmetric_range(intensity, "intensity", "RandSpike", axes=1)[0]

    def draw(self, rng: random.Random) -> dict:
        count = rng.randint(*self.num_spikes)
        return {
            "positions": [[rng.random() for _ in range(3)] for _ in range(count)],
            "intensity": rng.uniform(*self.intensity),
        }

    def augment(self, x, params):
        return spike(x, [p["positions"] for p in params], [p["intensity"] for p in params])


class RandGibbs(_RandomIntensity):
    """Add Gibbs ringing: truncate k-space to a ball shrinking with ``alpha`` (MONAI's RandGibbsNoise).

    Per sample ``alpha`` is drawn (and recorded); the centred spectrum is zeroed farther than
    ``(1 - alpha) * max(shape) / sqrt(2)`` voxels from its centre and the image is the real part
    of the inverse FFT (:func:`gpuprep.functional.kspace.gibbs_lowpass`). ``alpha`` near 0 is
    (almost) the identity; larger values blur and ring more.

    Parameters
    ----------
    keys:
        Image keys; label maps (by kind, see gp.get_kind) are left alone.
    alpha:
        Range of ``alpha`` within ``[0, 1]``: a number ``a`` means ``(0, a)``, or a pair.
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Reference
    ---------
    MONAI ``RandGibbsNoise(prob, alpha)``; the output equals ``monai.transforms.GibbsNoise(alpha)``
    with the recorded ``alpha``. Gibbs artefact: D. Zhuo and R. Gullapalli, "MR artifacts, safety,
    and quality control", RadioGraphics 2006.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 8, 8, 8)})
    >>> out = RandGibbs("image", alpha=(0.5, 0.5), seed=0)(s)
    >>> gp.get_history(out)[-1]["params"]["alpha"]
    0.5
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        alpha: float | Sequence[float] = (0.0, 1.0),
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        self.alpha = uniform_range(alpha, "alpha", "RandGibbs", minimum=0.0)
        if self.alpha[1] > 1.0:
            raise ConfigError(f"RandGibbs: alpha must lie within [0, 1], got {alpha!r}")

    def draw(self, rng: random.Random) -> dict:
        return {"alpha": rng.uniform(*self.alpha)}

    def augment(self, x, params):
        return gibbs_lowpass(x, [p["alpha"] for p in params])
