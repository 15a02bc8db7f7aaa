"""Wavelet shrinkage (BayesShrink / VisuShrink) with skimage's semantics, batched with ptwt."""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import ConfigError
from ...functional.wavelet import (
    METHODS,
    THRESHOLD_MODES,
    default_wavelet_levels,
    require_ptwt,
    wavelet_denoise,
)
from ...validation import check_bool, check_int
from ..base import Transform, float_intensity_keys
from ._common import check_choice, check_real


class WaveletDenoise(Transform):
    """Denoise intensity images by thresholding their 3D wavelet coefficients.

    Follows ``skimage.restoration.denoise_wavelet`` (its code, not only its docs): the noise sigma
    is estimated from the finest diagonal detail coefficients by the median absolute deviation
    unless given; ``"BayesShrink"`` picks one threshold per detail subband, ``"VisuShrink"`` the
    universal threshold ``sigma * sqrt(2 log n)``; the approximation is kept; the default
    number of levels is three less than the maximum (at least 1); the boundary extension is
    pywt's ``'symmetric'``. Each channel of each sample is processed on its own, all at once on
    the device (ptwt), with no host synchronisation. Label maps (by kind) are left alone.

    Parameters
    ----------
    keys:
        Image keys to denoise.
    method:
        ``"BayesShrink"`` (default) or ``"VisuShrink"``.
    mode:
        ``"soft"`` (default) or ``"hard"`` thresholding.
    wavelet:
        Any discrete pywt wavelet (``"db1"`` = Haar, ``"db2"``, ``"sym4"``, ...).
    wavelet_levels:
        Decomposition levels; ``None`` for skimage's default.
    sigma:
        Noise standard deviation in intensity units; ``None`` to estimate it per volume. (With
        VisuShrink an estimate removes most of the signal detail, as in skimage; a known sigma
        is better.)
    rescale_sigma:
        Kept for parity with skimage, where it rescales a user sigma when an *integer* image is
        converted to float. Images here are always floating point, which skimage does not
        rescale, so it has no effect (both values give skimage's float result).
    allow_missing_keys:
        Skip keys that are absent instead of raising.

    Notes
    -----
    The recorded parameters are the number of levels used per key.

    Reference
    ---------
    ``skimage.restoration.denoise_wavelet(volume, sigma, wavelet, mode, wavelet_levels,
    method=method, rescale_sigma=rescale_sigma)`` per channel; agreement ~1e-6 of the
    intensity range in float32.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> from gpuprep.transforms.denoise import WaveletDenoise
    >>> s = gp.make_sample({"image": torch.rand(1, 32, 32, 32)})
    >>> out = WaveletDenoise("image", method="BayesShrink", wavelet="db2")(s)
    >>> out["image"].shape
    torch.Size([1, 32, 32, 32])
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        method: str = "BayesShrink",
        mode: str = "soft",
        wavelet: str = "db1",
        wavelet_levels: int | None = None,
        sigma: float | None = None,
        rescale_sigma: bool = True,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.method = check_choice(name, "method", method, METHODS)
        self.mode = check_choice(name, "mode", mode, THRESHOLD_MODES)
        _, pywt = require_ptwt()  # MissingDependencyError without the 'denoise' extra
        discrete = pywt.wavelist(kind="discrete")
        if not isinstance(wavelet, str) or wavelet not in discrete:
            raise ConfigError(
                f"{name}: wavelet must be a discrete wavelet name known to pywt (e.g. 'db1', 'db2', "
                f"'sym4'), got {wavelet!r}"
            )
        self.wavelet = wavelet
        self.wavelet_levels = None if wavelet_levels is None else check_int(
            name, "wavelet_levels", wavelet_levels, minimum=1
        )
        self.sigma = None if sigma is None else check_real(name, "sigma", sigma, minimum=0.0)
        self.rescale_sigma = check_bool(name, "rescale_sigma", rescale_sigma)

    def make_params(self, batch: dict, keys: list[str]) -> list[dict]:
        size = len(batch[keys[0]])
        params: list[dict] = [{} for _ in range(size)]
        for key in float_intensity_keys(batch, keys):
            shape = tuple(batch[key].shape[-3:])
            levels = self.wavelet_levels or default_wavelet_levels(shape, self.wavelet)
            for index in range(size):
                params[index][key] = {"wavelet_levels": int(levels)}
        return params

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        for key in float_intensity_keys(batch, keys):
            levels = params[0][key]["wavelet_levels"]
            if any(p[key]["wavelet_levels"] != levels for p in params):
                raise ConfigError(
                    f"{type(self).__name__}: samples of one batch must share wavelet_levels, got "
                    f"{[p[key]['wavelet_levels'] for p in params]}"
                )
            batch[key] = wavelet_denoise(batch[key], self.wavelet, self.method, self.mode, levels, self.sigma)
        return batch
