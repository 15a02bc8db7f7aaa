"""Nyúl & Udupa histogram standardisation: piecewise-linear maps between percentile landmarks.

Training (:func:`average_landmarks`) maps every training image's percentiles linearly so that
its cutoff percentiles land on the ends of a standard scale (0..100 by default) and averages
them. Applying (:func:`standardize`) maps an image's own percentiles onto those landmarks,
linearly in between and extrapolating the first and last segments beyond. The definitions and
defaults follow TorchIO's ``HistogramStandardization`` (cutoff 1st/99th percentile, deciles
in between, output range 0..100, slopes of degenerate segments set to 0).

Reference
---------
L. G. Nyúl, J. K. Udupa and X. Zhang (2000), New variants of a method of MRI scale
standardization, *IEEE Transactions on Medical Imaging* 19(2), 143-150.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "DEFAULT_CUTOFF",
    "DEFAULT_QUANTILES",
    "STANDARD_RANGE",
    "average_landmarks",
    "landmark_percentiles",
    "snap_ties",
    "standardize",
    "uniform_landmarks",
]

#: Quantiles cut off at the ends (TorchIO's ``DEFAULT_CUTOFF``).
DEFAULT_CUTOFF: tuple[float, float] = (0.01, 0.99)
#: Quantiles in between: the deciles 0.1 .. 0.9.
DEFAULT_QUANTILES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))
#: The standard scale the cutoff percentiles are mapped to.
STANDARD_RANGE: tuple[float, float] = (0.0, 100.0)


def landmark_percentiles(
    cutoff: Sequence[float] = DEFAULT_CUTOFF, quantiles: Sequence[float] = DEFAULT_QUANTILES
) -> list[float]:
    """The percentiles (0..100) at which landmarks sit: the cutoffs and the quantiles between them.

    Example
    -------
    >>> landmark_percentiles()
    [1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0]
    """
    low, high = (float(c) for c in cutoff)
    inner = sorted({round(100.0 * float(q), 10) for q in quantiles if low < float(q) < high})
    return [round(100.0 * low, 10), *inner, round(100.0 * high, 10)]


def average_landmarks(
    percentile_values: torch.Tensor, output_range: Sequence[float] = STANDARD_RANGE
) -> torch.Tensor:
    """Average the training images' percentiles ``[n_images, K]`` mapped onto ``output_range``.

    Image ``i`` is mapped linearly so that its first and last landmark go to the ends of the
    range; the landmarks are the mean of the mapped percentiles (TorchIO's
    ``_get_average_mapping``: an image whose cutoff percentiles coincide gets slope 0). Computed
    in float64; returns float64 ``[K]``.

    Example
    -------
    >>> average_landmarks(torch.tensor([[0.0, 5.0, 10.0], [10.0, 30.0, 30.0]])).tolist()
    [0.0, 75.0, 100.0]
    """
    values = torch.as_tensor(percentile_values, dtype=torch.float64)
    low, high = (float(v) for v in output_range)
    span = values[:, -1] - values[:, 0]
    slopes = torch.where(span != 0, (high - low) / torch.where(span != 0, span, torch.ones_like(span)), 0.0)
    intercept = (low - slopes * values[:, 0]).mean()
    return (slopes[:, None] * values).mean(dim=0) + intercept


def uniform_landmarks(
    cutoff: Sequence[float] = DEFAULT_CUTOFF,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    output_range: Sequence[float] = STANDARD_RANGE,
) -> torch.Tensor:
    """Landmarks spaced like their percentiles over ``output_range`` (float64 ``[K]``).

    Using them maps every image's percentile landmarks onto evenly spread targets, a
    piecewise-linear equalisation that needs no training.

    Example
    -------
    >>> uniform_landmarks(cutoff=(0.0, 1.0), quantiles=(0.5,)).tolist()
    [0.0, 50.0, 100.0]
    """
    positions = torch.tensor(landmark_percentiles(cutoff, quantiles), dtype=torch.float64)
    low, high = (float(v) for v in output_range)
    return low + (high - low) * (positions - positions[0]) / (positions[-1] - positions[0])


def snap_ties(source: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bins: int) -> torch.Tensor:
    """Make landmarks that tie up to the histogram resolution exactly equal (``source [B, K]``).

    Histogram percentiles (:func:`gpuprep.functional.percentile.percentile` with ``bins`` bins over
    each sample's ``low..high``) of tied voxels, e.g. a background of zeros holding the 1st to
    30th percentiles, come out spread over up to a bin instead of equal. Each run of landmarks
    whose consecutive gaps are below two bin widths is set to the lower edge of the bin of its
    first landmark, so that, as with exact percentiles, the run is a tie: its segments get slope
    0 and a voxel at the tied value falls in the segment after the run (``digitize`` semantics).

    Example
    -------
    >>> snap_ties(torch.tensor([[0.001, 0.002, 5.0]]), torch.tensor([0.0]), torch.tensor([10.0]), 64).tolist()
    [[0.0, 0.0, 5.0]]
    """
    src = source.to(torch.float64)
    low64, high64 = low.to(torch.float64)[:, None], high.to(torch.float64)[:, None]
    width = (high64 - low64) / bins
    tied = src.diff(dim=1) < 2 * width  # [B, K-1]: landmark j ties with j + 1
    false = torch.zeros_like(tied[:, :1])
    in_run = torch.cat([tied, false], dim=1) | torch.cat([false, tied], dim=1)
    starts = ~torch.cat([false, tied], dim=1)  # a landmark not tied to the previous one starts a run
    index = torch.arange(src.shape[1], device=src.device).expand_as(src)
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    safe_width = torch.where(width > 0, width, torch.ones_like(width))
    edge = low64 + ((src - low64) / safe_width).floor().clamp(0, bins - 1) * safe_width
    edge = torch.where(width > 0, edge, src)
    snapped = torch.where(in_run, edge.gather(1, first), src)
    return snapped.to(source.dtype)


def standardize(
    x: torch.Tensor, source: torch.Tensor, target: torch.Tensor, epsilon: float | torch.Tensor = 1e-5
) -> torch.Tensor:
    """Map each sample's landmarks ``source [B, K]`` onto ``target [K]`` (or ``[B, K]``), piecewise linearly.

    ``x`` is ``[B, ...]``. A voxel below ``source[1]`` uses the first segment, one at or above
    ``source[K-2]`` the last (extrapolating), others the segment whose left landmark is the
    largest one ``<= x`` (``numpy.digitize(right=False)``). A segment whose source landmarks are
    closer than ``epsilon`` (a number, or a tensor ``[B]`` with one value per sample) gets slope
    0 (TorchIO's rule for images with a large background, whose low percentiles tie). A sample
    whose ``source`` holds NaN (empty mask) is returned unchanged. Float dtype kept.

    Example
    -------
    >>> x = torch.tensor([0.0, 1.0, 2.0, 4.0]).reshape(1, 4)
    >>> standardize(x, torch.tensor([[0.0, 2.0, 4.0]]), torch.tensor([0.0, 50.0, 100.0])).tolist()
    [[0.0, 25.0, 50.0, 100.0]]
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch = x.shape[0]
    values = x.to(dtype).reshape(batch, -1)
    src = source.to(device=x.device, dtype=torch.float64)
    dst = torch.as_tensor(target, dtype=torch.float64, device=x.device)
    dst = dst.expand(batch, -1) if dst.ndim == 1 else dst
    diff_src = src.diff(dim=1)
    diff_dst = dst.diff(dim=1)
    eps = torch.as_tensor(epsilon, dtype=torch.float64, device=x.device)
    flat = diff_src < (eps[:, None] if eps.ndim == 1 else eps)
    slope = torch.where(flat, 0.0, diff_dst / torch.where(flat, 1.0, diff_src))
    intercept = dst[:, :-1] - slope * src[:, :-1]
    inner = src[:, 1:-1].to(dtype).contiguous()
    segment = torch.searchsorted(inner, values.contiguous(), right=True)
    out = slope.to(dtype).gather(1, segment) * values + intercept.to(dtype).gather(1, segment)
    valid = ~torch.isnan(src).any(dim=1, keepdim=True)
    out = torch.where(valid, out, values)
    out_dtype = x.dtype if x.is_floating_point() else dtype
    return out.reshape(x.shape).to(out_dtype)
