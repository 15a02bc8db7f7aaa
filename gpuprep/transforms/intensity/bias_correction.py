"""N4 bias-field correction as a dictionary transform (ITK's ``N4BiasFieldCorrectionImageFilter`` in torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ...errors import ConfigError
from ...functional.n4 import N4Settings, n4_bias_field
from ...functional.threshold import otsu_threshold
from ...sample import IMAGE, copy_meta, meta_key
from ...validation import check_int, check_int_or_three
from ..base import Transform, float_intensity_keys, intensity_keys
from ..denoise._common import check_real, voxel_spacing
from ..mask.foreground import OTSU_BINS
from ._masking import mask_tensor


class BiasFieldCorrection(Transform):
    """Remove the smooth intensity non-uniformity of MRI with N4 (Tustison et al. 2010), on the data's device.

    The algorithm and its defaults are ITK's ``N4BiasFieldCorrectionImageFilter`` (as in
    SimpleITK and ANTs): the log image inside a mask, on a grid shrunk by ``shrink``, is sharpened
    by Wiener deconvolution of its histogram, and a cubic B-spline is fitted to the difference,
    level after level with the mesh doubled each time; see :func:`gpuprep.functional.n4.n4_bias_field`.
    The field is then evaluated at full resolution and the image divided by it. Every sample (and
    every channel) gets its own field; a batch is corrected together.

    The mask is ``mask_key``'s (e.g. from :class:`SkullStrip` or :class:`ForegroundMask`), or by
    default the voxels above the image's Otsu threshold (the head). Voxels that are not positive
    never enter the fit. Integer images become float32. The record holds, per key, the number of
    control points used, and, written when the correction runs, the iterations per level and
    the final convergence measure of each level.

    Parameters
    ----------
    keys:
        Intensity images to correct (label maps are left alone).
    mask_key:
        Key of a mask ``[1 or C, D, H, W]`` (nonzero = inside), or None for the Otsu foreground.
    shrink:
        Subsampling factor of the grid the field is fitted on (ITK's shrink filter).
    levels:
        Fitting levels; each doubles the control-point mesh.
    iterations:
        Maximum iterations per level: one number, or one per level.
    spline_distance:
        Control-point spacing in mm at the first level (ANTs' ``spline_param``), from the
        image's extent and voxel size. Give this or ``control_points``.
    control_points:
        Control points per axis at the first level (at least 4; ITK's default 4 = one mesh cell),
        one number or three.
    convergence_threshold:
        A level stops when the coefficient of variation of the field's change inside the mask
        falls to this.
    bins, fwhm, wiener_noise:
        Histogram sharpening: bins, Gaussian FWHM (log intensity) and Wiener noise, as in ITK.
    field_key:
        If given (with a single key), the multiplicative bias field is stored under this key.
    allow_missing_keys:
        Skip absent keys instead of raising.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> g = torch.linspace(-1, 1, 32)
    >>> tissue = 1.0 + (torch.arange(32) % 8 < 4).float().expand(1, 32, 32, 32)     # two tissues
    >>> bias = torch.exp(0.3 * g[:, None, None] + 0.2 * g[None, :, None] ** 2)
    >>> sample = gp.make_sample({"image": 100.0 * tissue * bias})
    >>> out = gp.BiasFieldCorrection("image", shrink=2, levels=3, field_key="bias")(sample)
    >>> bool((out["image"] / tissue).log().std() < 0.1 * bias.log().std()), out["bias"].shape
    (True, torch.Size([1, 32, 32, 32]))
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        mask_key: str | None = None,
        shrink: int = 4,
        levels: int = 4,
        iterations: int | Sequence[int] = 50,
        spline_distance: float | None = None,
        control_points: int | Sequence[int] | None = None,
        convergence_threshold: float = 0.001,
        bins: int = 200,
        fwhm: float = 0.15,
        wiener_noise: float = 0.01,
        field_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.mask_key = mask_key
        self.field_key = field_key
        if field_key is not None and len(self.keys) != 1:
            raise ConfigError(f"{name}: field_key needs exactly one key, got keys={self.keys}")
        if spline_distance is not None and control_points is not None:
            raise ConfigError(f"{name}: give spline_distance or control_points, not both "
                              f"(got {spline_distance!r} and {control_points!r})")
        self.spline_distance = (None if spline_distance is None
                                else check_real(name, "spline_distance", spline_distance, minimum=0.0, strict=True))
        self.control_points = check_int_or_three(name, "control_points", 4 if control_points is None
                                                 else control_points, minimum=4)
        levels = check_int(name, "levels", levels, minimum=1)
        self.settings = N4Settings(
            shrink=check_int(name, "shrink", shrink, minimum=1),
            levels=levels,
            iterations=_check_iterations(name, iterations, levels),
            control_points=self.control_points,
            convergence_threshold=check_real(name, "convergence_threshold", convergence_threshold, minimum=0.0),
            bins=check_int(name, "bins", bins, minimum=2),
            fwhm=check_real(name, "fwhm", fwhm, minimum=0.0, strict=True),
            wiener_noise=check_real(name, "wiener_noise", wiener_noise, minimum=0.0),
        )

    def make_params(self, batch: dict, keys: list[str]) -> list[dict]:
        size = len(batch[keys[0]])
        params: list[dict] = [{} for _ in range(size)]
        for key in intensity_keys(batch, keys):  # label maps are left alone
            counts = self._control_points(batch, key)
            for index in range(size):
                params[index][key] = {"control_points": [int(v) for v in counts[index]]}
        return params

    def _control_points(self, batch: dict, key: str) -> np.ndarray:
        """Control points per axis at the first level, ``[B, 3]``."""
        size = len(batch[key])
        if self.spline_distance is None:
            return np.tile(self.control_points, (size, 1))
        extent = voxel_spacing(batch, key) * (np.array(batch[key].shape[-3:]) - 1)
        return np.maximum(np.ceil(extent / self.spline_distance), 1).astype(np.int64) + 3

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        targets = float_intensity_keys(batch, keys)
        masks = {key: self._mask(batch, key) for key in targets}  # read before any key is replaced
        for key in targets:
            x = batch[key]
            counts = [tuple(p[key]["control_points"]) for p in params]
            log_field = torch.zeros_like(x, dtype=torch.float32)
            for group in sorted(set(counts)):  # samples sharing a mesh are corrected together
                rows = [index for index, count in enumerate(counts) if count == group]
                log_field[rows] = self._estimate(x[rows], masks[key][rows], group, params, rows, key)
            field = log_field.exp().to(x.dtype)
            batch[key] = x / field
            if self.field_key is not None:
                batch[self.field_key] = field
                batch[meta_key(self.field_key)] = copy_meta(batch.get(meta_key(key), {}), kind=IMAGE)
        return batch

    def _mask(self, batch: dict, key: str) -> torch.Tensor:
        x = batch[key]
        if self.mask_key is not None:
            return mask_tensor(type(self).__name__, batch, key, self.mask_key, x).expand_as(x)
        threshold = otsu_threshold(x, bins=OTSU_BINS).reshape(-1, 1, 1, 1, 1).to(x.dtype)
        return x > threshold

    def _estimate(self, x: torch.Tensor, mask: torch.Tensor, control_points: tuple, params: list[dict],
                  rows: list[int], key: str) -> torch.Tensor:
        """The log field of the samples ``rows`` (channels as separate problems), recording the outcome."""
        batch, channels = x.shape[:2]
        settings = N4Settings(**{**self.settings.__dict__, "control_points": control_points})
        result = n4_bias_field(x.reshape(batch * channels, *x.shape[2:]),
                               mask.reshape(batch * channels, *x.shape[2:]), settings)
        iterations = result.iterations.reshape(batch, channels, -1)
        convergence = result.convergence.reshape(batch, channels, -1)
        for position, index in enumerate(rows):
            params[index][key]["iterations"] = iterations[position].tolist()
            params[index][key]["convergence"] = [[_finite(v) for v in row] for row in convergence[position].tolist()]
        return result.log_field.reshape(x.shape)


def _finite(value: float) -> float | None:
    """A JSON-friendly number to 4 significant digits: NaN (an empty mask) becomes None."""
    return None if math.isnan(value) else float(f"{value:.4g}")


def _check_iterations(owner: str, value, levels: int) -> int | tuple[int, ...]:
    """One iteration budget, or one per level."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != levels:
            raise ConfigError(f"{owner}: iterations must be one number or one per level ({levels}), "
                              f"got {list(value)!r}")
        return tuple(check_int(owner, "iterations", v, minimum=1) for v in value)
    return check_int(owner, "iterations", value, minimum=1)
