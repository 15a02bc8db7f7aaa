"""Random intensity augmentation: gamma, bias field, contrast, brightness and blur.

Every transform here draws a few numbers per sample (recorded in the history, so a run replays
exactly), shares them between the sample's keys, changes intensity images only (label maps, by
kind, pass through untouched) and keeps the input's dtype and device (an integer image becomes
float32). The parameters are
turned into ``[B, ...]`` tensors and applied to the whole batch at once; samples skipped by ``p``
are not computed and come back unchanged. Nothing is read back from the volumes to the host.
Voxel noise lives in :mod:`gpuprep.transforms.augment.noise`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...errors import ConfigError
from ...functional.augment_intensity import adjust_contrast, bias_field, bias_field_terms, signed_power
from ...functional.filters import gaussian_filter
from ...functional.intensity_chain import VoxelStep
from ...random.ranges import symmetric_range, uniform_range
from ...records import applied_samples
from ...validation import check_bool, check_int
from ..base import float_intensity_keys
from ..random_base import RandomOptions, RandomTransform

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack

__all__ = ["RandBiasField", "RandBlur", "RandBrightness", "RandContrast", "RandGamma"]


class _RandomIntensity(RandomTransform, abstract=True):
    """Applies :meth:`augment` to the samples whose ``apply`` is True, for each float key.

    A subclass that changes each voxel on its own sets ``voxelwise = True`` and describes its
    step with :meth:`voxel_step`; :class:`~gpuprep.Compose` then applies consecutive such
    steps in one pass (:mod:`gpuprep.transforms.intensity_fusion`).
    """

    voxelwise = False

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        chosen = applied_samples(params)
        if not chosen:
            return batch
        drawn = [params[index] for index in chosen]
        for key in float_intensity_keys(batch, keys):
            x = batch[key]
            if len(chosen) == len(params):
                batch[key] = self.augment_key(key, x, drawn)
                continue
            index = torch.tensor(chosen, device=x.device)
            batch[key] = x.index_copy(0, index, self.augment_key(key, x.index_select(0, index), drawn))
        return batch

    def augment_key(self, key: str, x: torch.Tensor, params: list[dict]) -> torch.Tensor:
        """Transform ``x``, the chosen samples of ``batch[key]``: :meth:`augment`, the same for every key."""
        return self.augment(x, params)

    def augment(self, x: torch.Tensor, params: list[dict]) -> torch.Tensor:
        """Transform ``x`` ``[b, C, D, H, W]`` (the chosen samples) with their ``params``."""
        raise NotImplementedError

    def voxel_step(self, key: str, params: list[dict]) -> VoxelStep:
        """This transform's step on ``key`` for a whole batch (``params``: one dict per sample)."""
        raise NotImplementedError

    @staticmethod
    def _numbers(params: list[dict], *names: str, default: float = 0.0) -> np.ndarray:
        """``[B, len(names)]`` float64: each sample's numbers (``default`` for the samples skipped)."""
        return np.array([[float(p.get(name, default)) for name in names] for p in params]).reshape(len(params), -1)


def _applied(params: list[dict]) -> list[bool]:
    chosen = set(applied_samples(params))
    return [index in chosen for index in range(len(params))]


class RandGamma(_RandomIntensity):
    """Raise intensities to a random power ``gamma = exp(U(log_gamma))`` (TorchIO's RandomGamma).

    Applies ``sign(x) * |x| ** gamma``: ``x ** gamma`` for non-negative images and, as TorchIO's
    ``Gamma`` does for images with negative values, the sign kept for negative intensities.
    One gamma per sample for all its channels and keys (TorchIO draws one per channel).

    Parameters
    ----------
    keys:
        Image keys; label maps (by kind, see gp.get_kind) are left alone.
    log_gamma:
        Range of ``log(gamma)``: a number ``d`` means ``(-d, d)``, or a pair ``(low, high)``.
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Reference
    ---------
    ``torchio.RandomGamma(log_gamma)`` / ``torchio.transforms.Gamma(gamma)``.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 4, 4, 4)})
    >>> out = RandGamma("image", log_gamma=(0.5, 0.5), seed=0)(s)
    >>> round(gp.get_history(out)[-1]["params"]["gamma"], 4)
    1.6487
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        log_gamma: float | Sequence[float] = (-0.3, 0.3),
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        self.log_gamma = symmetric_range(log_gamma, "log_gamma", "RandGamma", axes=1)[0]

    def draw(self, rng: random.Random) -> dict:
        return {"gamma": math.exp(rng.uniform(*self.log_gamma))}

    voxelwise = True

    def augment(self, x, params):
        return signed_power(x, [p["gamma"] for p in params])

    def voxel_step(self, key, params):
        return VoxelStep("gamma", _applied(params), self._numbers(params, "gamma", default=1.0))


class RandBiasField(_RandomIntensity):
    """Multiply by a smooth random field ``exp(polynomial)``: MRI bias (TorchIO's RandomBiasField).

    The polynomial has total degree ``<= order`` in coordinates scaled to ``[-1, 1]`` between
    the first and last voxel centres of each axis; its ``(order+1)(order+2)(order+3)/6``
    coefficients are drawn uniformly, in TorchIO's term order, and recorded. Evaluated
    separably on the data's device (:func:`gpuprep.functional.augment_intensity.bias_field`).
    One field per sample for all its channels and keys (TorchIO draws one per image key).

    Parameters
    ----------
    keys:
        Image keys; label maps (by kind, see gp.get_kind) are left alone.
    coefficients:
        Coefficient range: a number ``c`` means ``(-c, c)``, or a pair ``(low, high)``.
    order:
        Maximum total degree of the polynomial (0 to 8).
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Reference
    ---------
    ``torchio.RandomBiasField(coefficients, order)``; the field equals TorchIO's
    ``BiasField.generate_bias_field(data, order, coefficients)`` for the recorded coefficients.
    K. Van Leemput et al., "Automated model-based tissue classification of MR images of the
    brain", IEEE TMI 1999.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.ones(1, 8, 8, 8)})
    >>> out = RandBiasField("image", coefficients=0.3, order=2, seed=0)(s)
    >>> len(gp.get_history(out)[-1]["params"]["coefficients"])
    10
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        coefficients: float | Sequence[float] = 0.5,
        order: int = 3,
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        self.coefficients = symmetric_range(coefficients, "coefficients", "RandBiasField", axes=1)[0]
        self.order = check_int("RandBiasField", "order", order, minimum=0)
        if self.order > 8:
            raise ConfigError(f"RandBiasField: order must be at most 8, got {order!r}")
        self.n_terms = len(bias_field_terms(self.order))

    def draw(self, rng: random.Random) -> dict:
        return {"coefficients": [rng.uniform(*self.coefficients) for _ in range(self.n_terms)]}

    def augment(self, x, params):
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        coefficients = torch.tensor([p["coefficients"] for p in params], dtype=dtype).to(x.device)
        field = bias_field(x.shape[2:], coefficients, self.order, dtype)
        return (x.to(dtype) * field).to(x.dtype)

    voxelwise = True

    def voxel_step(self, key, params):
        coefficients = np.array([p.get("coefficients", [0.0] * self.n_terms) for p in params], dtype=np.float64)
        return VoxelStep("bias", _applied(params), np.zeros((len(params), 0)), coefficients, self.order)


class RandContrast(_RandomIntensity):
    """Scale deviations from the mean: ``mean + f * (x - mean)``, ``f ~ U(factor)``.

    The mean is taken per channel of each sample, as batchgenerators' ``augment_contrast``
    (nnU-Net's ``ContrastAugmentationTransform``, ``per_channel`` statistics); ``f`` is one
    factor per sample drawn uniformly from ``factor`` (batchgenerators draws below and above 1
    with equal chance instead). This is not MONAI's ``AdjustContrast``, which is a gamma curve
    on min-max scaled intensities (see :class:`RandGamma`).

    Parameters
    ----------
    keys:
        Image keys; label maps (by kind, see gp.get_kind) are left alone.
    factor:
        Range ``(low, high)`` of the factor, ``low >= 0``; a number ``f`` means ``(0, f)``.
    preserve_range:
        Clamp each channel to its own original minimum and maximum (nnU-Net does).
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.tensor([0.0, 1.0, 2.0]).reshape(1, 1, 1, 3)})
    >>> RandContrast("image", factor=(2, 2), seed=0)(s)["image"].flatten().tolist()
    [-1.0, 1.0, 3.0]
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        factor: float | Sequence[float] = (0.75, 1.25),
        preserve_range: bool = False,
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        self.factor = uniform_range(factor, "factor", "RandContrast", minimum=0.0)
        self.preserve_range = check_bool("RandContrast", "preserve_range", preserve_range)

    def draw(self, rng: random.Random) -> dict:
        return {"factor": rng.uniform(*self.factor)}

    def augment(self, x, params):
        return adjust_contrast(x, [p["factor"] for p in params], self.preserve_range)

    voxelwise = True
    needs_input_statistics = True  # the mean: a fused run of voxel-wise steps can only start with it

    def voxel_step(self, key, params):
        numbers = self._numbers(params, "factor", default=1.0)
        flags = np.full((len(params), 1), float(self.preserve_range))
        return VoxelStep("contrast", _applied(params), np.hstack([numbers, flags]))


class RandBrightness(_RandomIntensity):
    """Add one random offset per sample: ``x + s``, ``s ~ U(shift)`` (MONAI's RandShiftIntensity).

    Parameters
    ----------
    keys:
        Image keys; label maps (by kind, see gp.get_kind) are left alone.
    shift:
        Offset range: a number ``d`` means ``(-d, d)``, or a pair ``(low, high)``, in the image's
        intensity units.
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Reference
    ---------
    ``monai.transforms.RandShiftIntensityd(keys, offsets)``.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.zeros(1, 2, 2, 2)})
    >>> RandBrightness("image", shift=(0.5, 0.5), seed=0)(s)["image"].unique().tolist()
    [0.5]
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        shift: float | Sequence[float] = (-0.1, 0.1),
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        self.shift = symmetric_range(shift, "shift", "RandBrightness", axes=1)[0]

    def draw(self, rng: random.Random) -> dict:
        return {"shift": rng.uniform(*self.shift)}

    def augment(self, x, params):
        shift = torch.tensor([p["shift"] for p in params], dtype=x.dtype).to(x.device)
        return x + shift.reshape(-1, 1, 1, 1, 1)

    voxelwise = True

    def voxel_step(self, key, params):
        return VoxelStep("shift", _applied(params), self._numbers(params, "shift"))


class RandBlur(_RandomIntensity):
    """Gaussian blur with a random standard deviation per axis, in voxels (TorchIO's RandomBlur).

    Each sample draws ``(sD, sH, sW)`` independently from ``std`` (TorchIO's ranges are in mm;
    here they are in voxels) and is smoothed by
    :func:`gpuprep.functional.filters.gaussian_filter` (scipy's kernel and ``reflect`` border).

    Parameters
    ----------
    keys:
        Image keys; label maps (by kind, see gp.get_kind) are left alone.
    std:
        Range of the standard deviation in voxels: a number ``s`` means ``(0, s)``, or a pair.
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Reference
    ---------
    ``scipy.ndimage.gaussian_filter(volume, sigma)`` with the recorded ``sigma``;
    ``torchio.RandomBlur(std)``.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 8, 8, 8)})
    >>> len(gp.get_history(RandBlur("image", std=(0.5, 1.5), seed=0)(s))[-1]["params"]["sigma"])
    3
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        std: float | Sequence[float] = (0.0, 2.0),
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        self.std = uniform_range(std, "std", "RandBlur", minimum=0.0)

    def draw(self, rng: random.Random) -> dict:
        return {"sigma": [rng.uniform(*self.std) for _ in range(3)]}

    def augment(self, x, params):
        sigma = torch.tensor([p["sigma"] for p in params], dtype=torch.float64)  # CPU metadata
        if x.dtype in (torch.float32, torch.float64):
            return gaussian_filter(x, sigma)
        return gaussian_filter(x.float(), sigma).to(x.dtype)
