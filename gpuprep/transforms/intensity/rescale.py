"""Linear intensity maps: percentile rescaling (TorchIO), fixed-range scaling (MONAI), clipping."""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import ConfigError
from ...functional.intensity import clip_intensity, rescale_linear, scale_intensity_range
from ...functional.percentile import percentile
from ...validation import check_bool
from ..base import Transform, float_intensity_keys
from ._masking import check_mask_argument, check_number, check_pair, resolve_mask


class RescaleIntensity(Transform):
    """Map the ``percentiles`` of each image linearly onto ``out_range`` (contrast stretching).

    Like TorchIO's ``RescaleIntensity(out_min_max, percentiles, masking_method)``: the two
    percentiles are computed per sample over the voxels selected by ``mask`` (all channels
    together, or per channel with ``channel_wise``), then ``low -> out_range[0]`` and
    ``high -> out_range[1]``, and with ``clip`` the result is clamped to ``out_range`` (TorchIO
    always clips). Percentiles come from a fine histogram on the data's device
    (:func:`gpuprep.functional.percentile.percentile`), within 1.5e-5 of the intensity range of
    ``numpy.percentile``; nothing is read back to the host, so nothing data-derived is recorded
    and replay recomputes the percentiles. A sample whose two percentiles coincide (constant
    image) or whose mask is empty is left unchanged (TorchIO warns and does the same). Integer
    keys (label maps) are left alone; float dtypes are kept.

    Parameters
    ----------
    keys:
        Image keys.
    percentiles:
        ``(low, high)`` in ``[0, 100]``, ``low < high``; ``(0, 100)`` is min-max scaling. The
        default ``(0.5, 99.5)`` is nnU-Net's.
    out_range:
        ``(out_min, out_max)``, the values the percentiles are mapped to.
    clip:
        Clamp the output to ``out_range``.
    mask:
        Voxels the percentiles are computed from: None (all), ``"nonzero"`` or the key of a mask
        ``[1 or C, D, H, W]`` in the sample (nonzero voxels are inside). The whole image is mapped.
    channel_wise:
        Percentiles per channel instead of over all channels of a sample.
    allow_missing_keys:
        Skip absent keys instead of raising.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.arange(101.0).reshape(1, 1, 1, 101)})
    >>> out = gp.RescaleIntensity("image", percentiles=(0, 100))(s)
    >>> out["image"].min().item(), out["image"].max().item()
    (0.0, 1.0)
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        percentiles: Sequence[float] = (0.5, 99.5),
        out_range: Sequence[float] = (0.0, 1.0),
        clip: bool = True,
        mask: str | None = None,
        channel_wise: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.percentiles = check_pair(name, "percentiles", percentiles, increasing=True)
        if not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ConfigError(f"{name}: percentiles must lie in [0, 100], got {tuple(percentiles)!r}")
        self.out_range = check_pair(name, "out_range", out_range)
        self.clip = check_bool(name, "clip", clip)
        self.mask = check_mask_argument(name, mask)
        self.channel_wise = check_bool(name, "channel_wise", channel_wise)

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        targets = float_intensity_keys(batch, keys)  # masks read before any key is replaced
        masks = {key: resolve_mask(type(self).__name__, batch, key, self.mask) for key in targets}
        for key in targets:
            x = batch[key]
            bounds = percentile(x, self.percentiles, masks[key], channel_wise=self.channel_wise)
            low, high = bounds[..., 0], bounds[..., 1]
            batch[key] = rescale_linear(x, low, high, *self.out_range, clip=self.clip)
        return batch


class ScaleIntensityRange(Transform):
    """Map ``[a_min, a_max]`` linearly onto ``[b_min, b_max]``, with optional clipping (MONAI semantics).

    ``(x - a_min) / (a_max - a_min) * (b_max - b_min) + b_min`` exactly as MONAI's
    ``ScaleIntensityRange(d)``; with ``b_min = b_max = None`` only the first division is done.
    Typical for CT: ``a_min=-1000, a_max=1000, b_min=0, b_max=1, clip=True``. Fixed constants, so
    the same on every sample and nothing to record. Integer keys are left alone.

    Parameters
    ----------
    keys:
        Image keys.
    a_min, a_max:
        Input intensities mapped to ``b_min`` and ``b_max``; must differ (MONAI only warns).
    b_min, b_max:
        Output intensities; both numbers or both None.
    clip:
        Clamp the output to ``[b_min, b_max]`` (needs both).
    allow_missing_keys:
        Skip absent keys instead of raising.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"ct": torch.tensor([-2000.0, 0.0, 40.0]).reshape(1, 1, 1, 3)})
    >>> gp.ScaleIntensityRange("ct", -1000, 1000, 0, 1, clip=True)(s)["ct"].flatten().tolist()
    [0.0, 0.5, 0.5199999809265137]
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        a_min: float,
        a_max: float,
        b_min: float | None = None,
        b_max: float | None = None,
        clip: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.a_min = check_number(name, "a_min", a_min)
        self.a_max = check_number(name, "a_max", a_max)
        if self.a_min == self.a_max:
            raise ConfigError(f"{name}: a_min and a_max must differ, got a_min={a_min!r}, a_max={a_max!r}")
        self.b_min = check_number(name, "b_min", b_min, allow_none=True)
        self.b_max = check_number(name, "b_max", b_max, allow_none=True)
        if (self.b_min is None) != (self.b_max is None):
            raise ConfigError(
                f"{name}: b_min and b_max must both be numbers or both None, got {b_min!r}, {b_max!r}"
            )
        self.clip = check_bool(name, "clip", clip)
        if self.clip and self.b_min is None:
            raise ConfigError(f"{name}: clip=True needs b_min and b_max, got None")

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        for key in float_intensity_keys(batch, keys):
            batch[key] = scale_intensity_range(
                batch[key], self.a_min, self.a_max, self.b_min, self.b_max, self.clip
            )
        return batch


class Clip(Transform):
    """Clamp intensities to ``[min, max]`` (either bound may be None). Integer keys are left alone.

    Parameters
    ----------
    keys:
        Image keys.
    min, max:
        Bounds; at least one must be given, and ``min <= max``.
    allow_missing_keys:
        Skip absent keys instead of raising.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.tensor([-5.0, 0.5, 7.0]).reshape(1, 1, 1, 3)})
    >>> gp.Clip("image", min=0)(s)["image"].flatten().tolist()
    [0.0, 0.5, 7.0]
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        min: float | None = None,
        max: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.min = check_number(name, "min", min, allow_none=True)
        self.max = check_number(name, "max", max, allow_none=True)
        if self.min is None and self.max is None:
            raise ConfigError(f"{name}: give min, max or both, got min=None, max=None")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"{name}: min must be <= max, got min={min!r}, max={max!r}")

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        for key in float_intensity_keys(batch, keys):
            batch[key] = clip_intensity(batch[key], self.min, self.max)
        return batch
