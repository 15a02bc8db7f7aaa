"""Z-score normalisation from masked statistics (TorchIO ``ZNormalization``, MONAI ``NormalizeIntensity``)."""

from __future__ import annotations

from collections.abc import Sequence

from ...functional.intensity import masked_mean_std, z_normalize
from ...validation import check_bool
from ..base import Transform, float_intensity_keys
from ._masking import check_mask_argument, resolve_mask


class ZNormalize(Transform):
    """Subtract the mean and divide by the standard deviation of the voxels in ``mask``, per sample.

    Two conventions exist and both are available:

    * default (``unbiased=True, keep_outside=False``): TorchIO's ``ZNormalization`` -- mean and
      **sample** standard deviation (``torch.std``, divisor ``n - 1``) of the masked voxels, and
      the **whole** image is normalised (the background of a skull-stripped brain becomes
      ``-mean / std``). Equal to ``tio.ZNormalization(masking_method=...)``.
    * ``unbiased=False, keep_outside=True`` with ``mask="nonzero"``: MONAI's
      ``NormalizeIntensity(nonzero=True)`` -- **population** standard deviation (divisor ``n``)
      and only the masked voxels change, zeros stay 0.

    (For a brain of a million voxels the two standard deviations differ by 5e-7 relative.)
    Statistics are over all channels of a sample, or per channel with ``channel_wise``
    (MONAI's ``channel_wise=True``). Where the standard deviation is 0 or undefined the image is
    only centred (MONAI's rule; TorchIO raises, which would need a host read); an empty mask
    leaves the sample unchanged. Statistics are computed on the device and not recorded; replay
    recomputes them. Integer keys are left alone; float dtypes are kept.

    Parameters
    ----------
    keys:
        Image keys.
    mask:
        Voxels the statistics come from: ``"nonzero"`` (default), None (all voxels) or the key of
        a mask ``[1 or C, D, H, W]`` in the sample.
    unbiased:
        Sample (True, TorchIO) or population (False, MONAI) standard deviation.
    keep_outside:
        Leave voxels outside the mask as they are (MONAI ``nonzero=True``) instead of normalising
        the whole image (TorchIO).
    channel_wise:
        Statistics per channel.
    allow_missing_keys:
        Skip absent keys instead of raising.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.tensor([0.0, 1.0, 2.0, 3.0]).reshape(1, 1, 1, 4)})
    >>> gp.ZNormalize("image", mask=None)(s)["image"].mean().abs().item() < 1e-7
    True
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        mask: str | None = "nonzero",
        unbiased: bool = True,
        keep_outside: bool = False,
        channel_wise: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.mask = check_mask_argument(name, mask)
        self.unbiased = check_bool(name, "unbiased", unbiased)
        self.keep_outside = check_bool(name, "keep_outside", keep_outside)
        self.channel_wise = check_bool(name, "channel_wise", channel_wise)

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        targets = float_intensity_keys(batch, keys)  # masks read before any key is replaced
        masks = {key: resolve_mask(type(self).__name__, batch, key, self.mask) for key in targets}
        for key in targets:
            x, inside = batch[key], masks[key]
            mean, std, _ = masked_mean_std(
                x, inside, channel_wise=self.channel_wise, correction=1 if self.unbiased else 0
            )
            batch[key] = z_normalize(x, mean, std, inside if self.keep_outside else None)
        return batch
