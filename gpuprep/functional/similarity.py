"""Image similarity metrics for registration: MSE, global and local cross-correlation, Mattes mutual information.

Every metric compares a ``fixed`` and a ``moving`` batch ``[B, C, D, H, W]`` and returns one value
per sample, a tensor ``[B]``:

- ``fixed`` and ``moving`` broadcast against each other (one template ``[1, ...]`` against a batch);
  all channels of a sample are pooled into its one value;
- ``mask`` (boolean or 0/1, broadcastable to the volumes) keeps only the voxels where it is
  nonzero; a sample without any such voxel gives NaN;
- the arithmetic is float32 (float64 if either input is float64), on the inputs' device, without
  reading data back to the host;
- every metric is differentiable with respect to ``moving`` (registration optimises through
  them). :func:`mean_squared_error` is a distance (lower is better); the others are
  similarities (higher is better).

References
----------
B. B. Avants et al. (2008), Symmetric diffeomorphic image registration with cross-correlation,
*Medical Image Analysis* 12(1), 26-41 (the neighbourhood "CC" metric of ANTs).
G. Balakrishnan et al. (2019), VoxelMorph: a learning framework for deformable medical image
registration, *IEEE Transactions on Medical Imaging* 38(8), 1788-1800 (its NCC loss).
D. Mattes et al. (2003), PET-CT image registration in the chest using free-form deformations,
*IEEE Transactions on Medical Imaging* 22(1), 120-128.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..validation import check_int, check_int_or_three
from .axis_operators import cubic_bspline_weights
from .filters import box_filter
from .percentile import masked_min_max

__all__ = [
    "joint_histogram",
    "local_normalized_cross_correlation",
    "mean_squared_error",
    "mutual_information",
    "normalized_cross_correlation",
]


def _prepare(
    fixed: torch.Tensor, moving: torch.Tensor, mask: Any, owner: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Broadcast ``fixed`` and ``moving`` to one float shape ``[B, ...]``; the mask as 0/1 weights of that shape."""
    if not isinstance(fixed, torch.Tensor) or not isinstance(moving, torch.Tensor):
        raise TypeError(f"{owner}: fixed and moving must be tensors, got {type(fixed).__name__} "
                        f"and {type(moving).__name__}")
    try:
        shape = torch.broadcast_shapes(fixed.shape, moving.shape)
    except RuntimeError as error:
        raise ValueError(f"{owner}: fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} "
                         f"do not broadcast") from error
    if len(shape) < 2:
        raise ValueError(f"{owner}: expected batches [B, C, D, H, W], got shape {tuple(shape)}")
    dtype = torch.float64 if torch.float64 in (fixed.dtype, moving.dtype) else torch.float32
    f = fixed.to(dtype).expand(shape)
    m = moving.to(device=f.device, dtype=dtype).expand(shape)
    if mask is None:
        return f, m, None
    mask = torch.as_tensor(mask, device=f.device)
    try:
        weight = torch.broadcast_to(mask != 0, shape).to(dtype)
    except RuntimeError as error:
        raise ValueError(f"{owner}: mask {tuple(mask.shape)} does not broadcast to {tuple(shape)}") from error
    return f, m, weight


def _mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean ``[B]`` of ``values [B, ...]`` over the voxels whose ``weight`` is 1."""
    dims = tuple(range(1, values.ndim))
    if weight is None:
        return values.mean(dim=dims)
    return (values * weight).sum(dim=dims) / weight.sum(dim=dims)


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[B]`` viewed as ``[B, 1, ...]`` with ``ndim`` axes in all."""
    return values.reshape(-1, *([1] * (ndim - 1)))


def mean_squared_error(fixed: torch.Tensor, moving: torch.Tensor, mask: Any = None) -> torch.Tensor:
    """Mean of ``(fixed - moving) ** 2`` over the (masked) voxels of every sample: ``[B]``.

    Parameters
    ----------
    fixed, moving:
        Batches ``[B, C, D, H, W]`` (or any ``[B, ...]``) that broadcast against each other.
    mask:
        Optional boolean or 0/1 tensor broadcastable to the volumes: only its nonzero voxels count.

    Example
    -------
    >>> fixed = torch.zeros(2, 1, 2, 2, 2)
    >>> mean_squared_error(fixed, fixed + torch.tensor([1.0, 3.0]).view(2, 1, 1, 1, 1)).tolist()
    [1.0, 9.0]
    """
    f, m, weight = _prepare(fixed, moving, mask, "mean_squared_error")
    return _mean((f - m).square(), weight)


def normalized_cross_correlation(fixed: torch.Tensor, moving: torch.Tensor, mask: Any = None) -> torch.Tensor:
    """Pearson correlation of the (masked) voxels of ``fixed`` and ``moving``, per sample: ``[B]`` in ``[-1, 1]``.

    ``cov(f, m) / sqrt(var(f) var(m))`` with the means, variances and covariance taken over the
    voxels inside the mask. It is invariant to a positive affine change of either intensity scale.
    A sample where either image is constant gives 0 (up to the rounding of its mean).

    Parameters
    ----------
    fixed, moving:
        Batches ``[B, C, D, H, W]`` (or any ``[B, ...]``) that broadcast against each other.
    mask:
        Optional boolean or 0/1 tensor broadcastable to the volumes: only its nonzero voxels count.

    Example
    -------
    >>> x = torch.arange(8.0).view(1, 1, 2, 2, 2)
    >>> normalized_cross_correlation(x, 3 * x + 1).tolist(), normalized_cross_correlation(x, -x).tolist()
    ([1.0], [-1.0])
    """
    f, m, weight = _prepare(fixed, moving, mask, "normalized_cross_correlation")
    # centred first (two passes): E[fm] - E[f]E[m] would cancel catastrophically in float32
    df = f - _per_sample(_mean(f, weight), f.ndim)
    dm = m - _per_sample(_mean(m, weight), m.ndim)
    covariance = _mean(df * dm, weight)
    product = _mean(df.square(), weight) * _mean(dm.square(), weight)
    tiny = torch.finfo(product.dtype).tiny
    return (covariance / product.clamp(min=tiny).sqrt()).clamp(-1.0, 1.0)


def local_normalized_cross_correlation(
    fixed: torch.Tensor, moving: torch.Tensor, window: Any = 9, mask: Any = None, eps: float = 1e-5
) -> torch.Tensor:
    """Windowed (local) squared correlation, ANTs' "CC" and VoxelMorph's NCC, averaged per sample: ``[B]``.

    At every voxel ``x``, with ``W(x)`` the voxels of the ``window`` box centred on ``x`` that lie
    inside the volume (and inside the mask, if one is given), ``n = |W(x)|`` and
    ``<g> = sum_{y in W(x)} g(y) / n``:

    - ``cross = <f m> - <f> <m>``, ``var_f = <f^2> - <f>^2``, ``var_m = <m^2> - <m>^2``;
    - ``cc(x) = cross^2 / (var_f var_m + eps)``;

    and the result is the mean of ``cc`` over the (masked) voxels, in ``[0, 1)``. The sums are
    separable box filters. **Borders**: the window is truncated to the voxels inside the volume
    (the statistics at a border voxel come from fewer voxels; nothing is padded), which is what
    ANTs' neighbourhood correlation does; with a mask, the window is truncated to the mask as
    well. VoxelMorph instead zero-pads and divides by the full window size, and it sums rather than
    averages, so its ``eps = e`` is ``eps = e / n^2`` here; its loss is minus this mean. ANTs' value
    is minus the mean of ``cross^2 / (var_f var_m)`` without ``eps``, a flat window counting as 1.
    ``eps`` is in units of intensity^4: it suits intensities of order 1 and keeps flat windows
    (``var = 0``) at ``cc = 0``.

    Parameters
    ----------
    fixed, moving:
        Batches ``[B, C, D, H, W]`` that broadcast against each other (each channel is
        correlated with itself, and all enter the mean).
    window:
        Box side in voxels: one integer or one per axis (D, H, W). An even side reaches one voxel
        further before the centre than after it, as ``scipy.ndimage.uniform_filter``.
    mask:
        Optional boolean or 0/1 tensor broadcastable to the volumes: only its nonzero voxels enter
        the windows and the mean.
    eps:
        Positive constant added to the denominator.

    Example
    -------
    >>> x = torch.rand(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    >>> round(local_normalized_cross_correlation(x, 2 * x + 1, window=5, eps=1e-12).item(), 4)
    1.0
    """
    owner = "local_normalized_cross_correlation"
    size = check_int_or_three(owner, "window", window, minimum=1)
    try:
        offset = float(eps)
    except (TypeError, ValueError):
        offset = math.nan
    if not (math.isfinite(offset) and offset > 0):
        raise ValueError(f"{owner}: eps must be a positive number, got {eps!r}")
    f, m, weight = _prepare(fixed, moving, mask, owner)
    if f.ndim != 5:
        raise ValueError(f"{owner}: expected batches [B, C, D, H, W], got shape {tuple(f.shape)}")
    # The local statistics do not change with a global offset; removing the mean keeps
    # <f^2> - <f>^2 from cancelling on images far from zero (CT, raw MR).
    f = f - _per_sample(_mean(f, weight), 5).detach().nan_to_num()
    m = m - _per_sample(_mean(m, weight), 5).detach().nan_to_num()
    terms = [f, m, f * f, m * m, f * m]
    if weight is not None:
        terms = [term * weight for term in terms]
    count = torch.ones_like(f) if weight is None else weight
    stack = torch.stack([count, *terms], dim=1)  # [B, 6, C, D, H, W]
    batch, _, channels, *spatial = stack.shape
    # constant (zero) padding, then dividing by the box sum of the count: a truncated window
    sums = box_filter(stack.reshape(batch, 6 * channels, *spatial), size, mode="constant")
    sums = sums.reshape(batch, 6, channels, *spatial)
    n = sums[:, 0]
    n = torch.where(n > 0, n, torch.ones_like(n))  # voxels far outside the mask: not used
    mean_f, mean_m, mean_ff, mean_mm, mean_fm = (sums[:, k] / n for k in range(1, 6))
    var_f = (mean_ff - mean_f.square()).clamp(min=0)
    var_m = (mean_mm - mean_m.square()).clamp(min=0)
    cross = mean_fm - mean_f * mean_m
    return _mean(cross.square() / (var_f * var_m + offset), weight)


def _bin_positions(
    values: torch.Tensor, weight: torch.Tensor | None, given: Any, bins: int, name: str
) -> torch.Tensor:
    """Continuous bin coordinates ``t = 1 + (bins - 3) (v - lo) / (hi - lo)`` clamped to ``[1, bins - 2]``."""
    batch = values.shape[0]
    if given is None:
        lo, hi = masked_min_max(values.detach(), None if weight is None else weight > 0)
    else:
        if not isinstance(given, (tuple, list)) or len(given) != 2:
            raise ValueError(f"joint_histogram: {name} must be a pair (low, high), got {given!r}")
        lo, hi = (torch.as_tensor(v, dtype=values.dtype, device=values.device).expand(batch) for v in given)
    span = hi - lo
    ok = torch.isfinite(span) & (span > 0)
    scale = torch.where(ok, (bins - 3) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(span))
    low = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    return 1.0 + ((values - low[:, None]) * scale[:, None]).clamp(0.0, bins - 3.0)


def joint_histogram(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    bins: int = 32,
    mask: Any = None,
    fixed_range: Any = None,
    moving_range: Any = None,
) -> torch.Tensor:
    """Mattes' Parzen-window joint histogram of every sample: ``[B, bins, bins]`` (fixed bin, moving bin).

    Both axes have ``bins`` bins centred at ``0 .. bins - 1`` in bin units. An intensity ``v`` of
    an image whose range is ``[lo, hi]`` sits at ``t = 1 + (bins - 3) (v - lo) / (hi - lo)``,
    clamped to ``[1, bins - 2]``: ``lo`` at bin 1 and ``hi`` at bin ``bins - 2``, so that the
    cubic kernel, which reaches two bins to either side, never leaves the histogram. A voxel adds
    ``beta0(k - t_f) beta3(j - t_m)`` to bin ``(k, j)``, where ``beta0`` is the zero-order B-spline
    (the fixed voxel goes whole into its nearest bin, ``k = floor(t_f + 1/2)``) and ``beta3`` the
    cubic B-spline (the moving voxel spreads over the four bins around ``t_m``), as in Mattes et al.

    Every voxel thus adds exactly 1 (the histogram sums to the number of masked voxels). The
    ranges are each sample's (masked) min..max unless given; they are constants for autograd.
    The histogram is differentiable with respect to ``moving`` (piecewise cubic in its values;
    zero gradient for values clamped to a given range). Built with four ``index_add`` of all
    voxels at once (on CUDA, their float atomics make the last bits vary from run to run).

    Parameters
    ----------
    fixed, moving:
        Batches ``[B, C, D, H, W]`` (or any ``[B, ...]``) that broadcast against each other;
        all channels of a sample enter one histogram.
    bins:
        Bins per axis, at least 4.
    mask:
        Optional boolean or 0/1 tensor broadcastable to the volumes: only its nonzero voxels count
        (in the histogram and in the ranges).
    fixed_range, moving_range:
        ``(low, high)``, each a number or a tensor ``[B]``; ``None``: the sample's masked min and
        max. Values outside are clamped to it; a range with ``high <= low`` puts every voxel in bin 1.

    Example
    -------
    >>> x = torch.tensor([0.0, 1.0, 1.0, 2.0]).view(1, 1, 4)
    >>> h = joint_histogram(x, x, bins=5)
    >>> h.sum().item(), h.sum(2).tolist()
    (4.0, [[0.0, 1.0, 2.0, 1.0, 0.0]])
    """
    owner = "joint_histogram"
    bins = check_int(owner, "bins", bins, minimum=4)
    f, m, weight = _prepare(fixed, moving, mask, owner)
    batch = f.shape[0]
    f, m = f.reshape(batch, -1), m.reshape(batch, -1)
    weight = None if weight is None else weight.reshape(batch, -1)
    fixed_bin = torch.floor(_bin_positions(f.detach(), weight, fixed_range, bins, "fixed_range") + 0.5).long()
    position = _bin_positions(m, weight, moving_range, bins, "moving_range")
    low = torch.floor(position.detach()).clamp(1, bins - 3)  # t = bins - 2 belongs to the last cell
    samples = torch.arange(batch, device=f.device)[:, None]
    first = ((samples * bins + fixed_bin) * bins + low.long() - 1).reshape(-1)  # flat index of tap 0
    joint = torch.zeros(batch * bins * bins, dtype=f.dtype, device=f.device)
    for tap, tap_weight in enumerate(cubic_bspline_weights(position - low)):
        if weight is not None:
            tap_weight = tap_weight * weight
        joint = joint.index_add(0, first + tap, tap_weight.reshape(-1))
    return joint.reshape(batch, bins, bins)


def _plogp(p: torch.Tensor) -> torch.Tensor:
    """``p log p`` with ``0 log 0 = 0`` and a finite gradient at 0."""
    return p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))


def mutual_information(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    bins: int = 32,
    mask: Any = None,
    fixed_range: Any = None,
    moving_range: Any = None,
) -> torch.Tensor:
    """Mattes mutual information of ``fixed`` and ``moving``, in nats, per sample: ``[B]``.

    With ``p(f, m)`` the :func:`joint_histogram` normalised to sum 1 and ``p(f)``, ``p(m)`` its
    marginals: ``MI = sum p(f, m) log(p(f, m) / (p(f) p(m)))``, computed as
    ``H(f) + H(m) - H(f, m)`` in float64 (returned in the inputs' float dtype). Parzen windows:
    a zero-order (box) B-spline for the fixed image and a cubic B-spline for the moving image, as
    Mattes et al. (and ITK's ``MattesMutualInformationImageToImageMetricv4``, whose bin layout
    differs slightly, so its values differ a little). MI is at most ``log(bins)``; it is 0 for
    independent images (up to the estimator's bias, about ``bins^2 / (2 N)`` for ``N`` voxels)
    and for a constant image.

    Parameters
    ----------
    fixed, moving, bins, mask, fixed_range, moving_range:
        As in :func:`joint_histogram`.

    Example
    -------
    >>> x = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> mi = mutual_information(x, x)
    >>> bool((mutual_information(x, 1 - x) - mi).abs().max() < 1e-5), bool((mi > 2).all())
    (True, True)
    """
    joint = joint_histogram(fixed, moving, bins, mask, fixed_range, moving_range).to(torch.float64)
    p = joint / joint.sum(dim=(1, 2), keepdim=True)
    mi = _plogp(p).sum(dim=(1, 2)) - _plogp(p.sum(dim=2)).sum(dim=1) - _plogp(p.sum(dim=1)).sum(dim=1)
    dtype = torch.float64 if torch.float64 in (fixed.dtype, moving.dtype) else torch.float32
    return mi.to(dtype)
