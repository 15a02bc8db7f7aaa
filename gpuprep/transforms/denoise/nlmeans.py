"""Non-local means (blockwise fast variant, or the classic pixelwise one), vectorised over shifts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import ConfigError
from ...functional.nlmeans import check_patch, nl_means, nl_means_pixelwise
from ...functional.wavelet import estimate_sigma
from ...validation import check_bool, check_int
from ..base import Transform, float_intensity_keys
from ._common import check_real


class NonLocalMeans(Transform):
    """Denoise by averaging voxels whose surrounding patches look alike (non-local means).

    With ``fast_mode=True`` (default) this is the blockwise algorithm of
    ``skimage.restoration.denoise_nl_means(fast_mode=True)`` (Darbon et al. 2008; Froment 2014):
    patch distances are box sums of squared differences, one search shift at a time, here
    vectorised over all voxels and chunks of shifts (see
    :func:`gpuprep.functional.nlmeans.nl_means`). ``fast_mode=False`` is the classic algorithm
    with Gaussian-weighted patches (:func:`~gpuprep.functional.nlmeans.nl_means_pixelwise`),
    ``(2d+1)^3 * s^3`` operations per voxel. Each channel of each sample is denoised on its own.
    Label maps (by kind) are left alone.

    Parameters
    ----------
    keys:
        Image keys to denoise.
    patch_size:
        Odd patch side in voxels (default 3), at most 21.
    patch_distance:
        Search radius in voxels; the search cube has ``(2d+1)^3`` voxels (default 2), at most 20.
    h:
        Cut-off in intensity units (larger: smoother). ``None`` (default) uses, per volume, the
        noise sigma estimated by the wavelet MAD rule of ``skimage.restoration.estimate_sigma``
        (skimage's rule of thumb "h about sigma"), computed on the device.
    sigma:
        Known noise standard deviation, subtracted from patch distances (skimage's ``sigma``);
        with it, a smaller ``h`` (about ``0.8 * sigma``) is usual.
    fast_mode:
        Blockwise (True) or classic pixelwise (False) algorithm.
    exact_exp:
        True (default): weights use the true exponential. False: skimage's bit-trick
        approximation (up to ~4 % error on a weight), to reproduce skimage bit for bit.
    allow_missing_keys:
        Skip keys that are absent instead of raising.

    Reference
    ---------
    ``skimage.restoration.denoise_nl_means(volume, patch_size, patch_distance, h,
    fast_mode=fast_mode, sigma=sigma, channel_axis=None)`` per channel: equal to float rounding
    with ``exact_exp=False``; with the exact exponential the results differ by up to ~0.5 % of
    the intensity range. The border is padded as skimage pads it (NumPy's ``'reflect'``).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> from gpuprep.transforms.denoise import NonLocalMeans
    >>> s = gp.make_sample({"image": torch.rand(1, 16, 16, 16)})
    >>> NonLocalMeans("image", patch_size=3, patch_distance=2, h=0.2)(s)["image"].shape
    torch.Size([1, 16, 16, 16])
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        patch_size: int = 3,
        patch_distance: int = 2,
        h: float | None = None,
        sigma: float = 0.0,
        fast_mode: bool = True,
        exact_exp: bool = True,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.patch_size = check_int(name, "patch_size", patch_size, minimum=1)
        self.patch_distance = check_int(name, "patch_distance", patch_distance, minimum=0)
        try:  # sizes that would pad and search without end are refused before any work
            check_patch(self.patch_size, self.patch_distance, name)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.h = None if h is None else check_real(name, "h", h, minimum=0.0, strict=True)
        self.sigma = check_real(name, "sigma", sigma, minimum=0.0)
        self.fast_mode = check_bool(name, "fast_mode", fast_mode)
        self.exact_exp = check_bool(name, "exact_exp", exact_exp)

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        algorithm = nl_means if self.fast_mode else nl_means_pixelwise
        for key in float_intensity_keys(batch, keys):
            image = batch[key]
            h: float | torch.Tensor | None = self.h
            if h is None:
                # per volume, on the device; a noiseless volume falls back to a tiny positive h
                h = estimate_sigma(image).clamp(min=1e-12)
            batch[key] = algorithm(
                image, self.patch_size, self.patch_distance, h, self.sigma, exact_exp=self.exact_exp
            )
        return batch
