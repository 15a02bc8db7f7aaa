"""Batched, masked histograms and percentiles without a full sort.

Sorting a brain volume to read two percentiles is wasteful (``torch.quantile`` sorts, copies the
input and refuses more than 16M elements; MONAI and TorchIO go through NumPy on the CPU). Here a
percentile is read from a fine histogram instead, for every sample (and optionally every
channel) of a batch at once:

1. per row (a sample, or a sample's channel) the minimum and maximum of the masked voxels;
2. one ``index_add_`` of all rows into ``[R, bins]`` bins (``bins = 2**16`` by default) spanning
   each row's own min..max;
3. the cumulative counts locate the bins of the two order statistics that ``numpy.percentile``
   (``method="linear"``) interpolates between, and each is placed inside its bin assuming the
   bin's values are spread evenly.

The error against ``numpy.percentile`` is at most one bin width, ``(max - min) / bins``
(1.5e-5 of the intensity range by default; float32 rounding of the bin position adds about
``bins * 2**-24`` bins). Everything stays on the data's device: no host synchronisation, no sort,
no 16M-element limit. A two-pass scheme (coarse bins, then sub-bins of only the bins holding the
wanted ranks) was tried first: it needs a per-voxel table look-up and was slower on the CPU than
one pass with many bins, whose count array (256 KiB per row) is still small.

Two consequences of reading values from a histogram: tied values (a background of zeros) are
spread over their bin, so percentiles that NumPy returns equal may differ here by up to a bin
(see :func:`gpuprep.functional.histogram_standardize.snap_ties`); and the resolution is relative
to each row's full range, so a single extreme outlier coarsens it for all other values.

Layout: ``x`` is ``[B, C, D, H, W]`` (any trailing shape works); a ``mask`` is a boolean tensor
broadcastable to ``x`` (``[B, 1, D, H, W]`` for one mask per sample). Values must be finite: a NaN
among the masked voxels gives NaN (as NumPy). A row without any masked voxel gives NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["DEFAULT_BINS", "masked_histogram", "masked_min_max", "percentile"]

#: Histogram bins per row used by :func:`percentile`: error at most (max - min) / 65536.
DEFAULT_BINS = 2**16


def _rows(
    x: torch.Tensor, mask: torch.Tensor | None, channel_wise: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """View ``x`` as rows ``[R, N]`` (R = B, or B*C when channel-wise) with the mask as rows too."""
    if x.ndim < 2:
        raise ValueError(f"expected a batched tensor [B, C, ...], got shape {tuple(x.shape)}")
    dtype = x.dtype if x.dtype == torch.float64 else torch.float32
    rows = x.shape[0] * x.shape[1] if channel_wise else x.shape[0]
    values = x.to(dtype).reshape(rows, -1)
    if mask is None:
        return values, None
    mask = torch.broadcast_to(mask.to(device=x.device, dtype=torch.bool), x.shape)
    return values, mask.reshape(rows, -1)


def _unrows(out: torch.Tensor, x: torch.Tensor, channel_wise: bool) -> torch.Tensor:
    """Reshape ``[R, ...]`` back to ``[B, ...]`` or ``[B, C, ...]``."""
    lead = (x.shape[0], x.shape[1]) if channel_wise else (x.shape[0],)
    return out.reshape(*lead, *out.shape[1:])


def _row_min_max(
    values: torch.Tensor, valid: torch.Tensor | None, scratch: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row min and max of the valid values (+inf/-inf for an empty row)."""
    if valid is None:
        return values.amin(dim=1), values.amax(dim=1)
    scratch = torch.empty_like(values) if scratch is None else scratch
    inf = torch.tensor(float("inf"), dtype=values.dtype, device=values.device)
    lo = torch.where(valid, values, inf, out=scratch).amin(dim=1)
    hi = torch.where(valid, values, -inf, out=scratch).amax(dim=1)
    return lo, hi


def _histogram_rows(
    values: torch.Tensor, valid: torch.Tensor | None, bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row min, max and counts of the valid values in ``bins`` equal bins over min..max.

    Returns ``counts`` (int64 ``[R, bins]``), ``lo`` and ``hi`` (``[R]``). Written as a few in-place
    passes over a single buffer, allocated once: it holds the float bin positions and is then
    converted, element by element in place, to the integer bin indices (both 4 bytes for float32,
    8 for float64), which one ``index_add_`` counts. On the CPU every fresh full-size buffer
    costs as much as two passes (page faults), so this matters more than the arithmetic.
    """
    rows = values.shape[0]
    int_dtype = torch.int64 if values.dtype == torch.float64 else torch.int32
    index = torch.empty(values.shape, dtype=int_dtype, device=values.device)
    position = index.view(values.dtype)  # same memory, read as floats
    lo, hi = _row_min_max(values, valid, position)
    span = hi - lo
    ok = torch.isfinite(span) & (span > 0)
    scale = torch.where(ok, bins / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(span))
    low = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    torch.sub(values, low[:, None], out=position)
    position.mul_(scale[:, None]).clamp_(0, bins - 1)
    torch.nan_to_num_(position, nan=0.0)
    index.copy_(position)  # float -> int in place (same element positions): truncation == floor here
    if rows > 1:
        index.add_(torch.arange(rows, device=index.device, dtype=int_dtype)[:, None] * bins)
    if valid is not None:
        dump = torch.tensor(rows * bins, dtype=int_dtype, device=index.device)
        torch.where(valid, index, dump, out=index)
    counts = torch.zeros(rows * bins + 1, dtype=int_dtype, device=index.device)
    ones = torch.ones(1, dtype=int_dtype, device=index.device).expand(index.numel())
    counts.index_add_(0, index.reshape(-1), ones)
    return counts[: rows * bins].reshape(rows, bins).long(), lo, hi


def masked_min_max(
    x: torch.Tensor, mask: torch.Tensor | None = None, *, channel_wise: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of the masked voxels of every sample.

    Returns two tensors ``[B]`` (``[B, C]`` if ``channel_wise``); ``+inf``/``-inf`` for an empty row.

    Example
    -------
    >>> lo, hi = masked_min_max(torch.arange(8.0).reshape(2, 1, 4))
    >>> lo.tolist(), hi.tolist()
    ([0.0, 4.0], [3.0, 7.0])
    """
    values, valid = _rows(x, mask, channel_wise)
    lo, hi = _row_min_max(values, valid)
    return _unrows(lo, x, channel_wise), _unrows(hi, x, channel_wise)


def masked_histogram(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    bins: int = 256,
    *,
    channel_wise: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Histogram of every sample over its own min..max, like ``numpy.histogram(v, bins, (v.min(), v.max()))``.

    Parameters
    ----------
    x:
        Batch ``[B, C, D, H, W]``.
    mask:
        Optional boolean tensor broadcastable to ``x``; only its True voxels are counted.
    bins:
        Number of equal-width bins between each row's minimum and maximum (the maximum falls in
        the last bin, as in NumPy).
    channel_wise:
        One histogram per channel instead of one per sample.

    Returns
    -------
    counts, lo, hi:
        ``int64 [B, bins]`` (``[B, C, bins]``) and the edges ``[B]`` (``[B, C]``) of each histogram.
        Bin ``i`` spans ``lo + i * (hi - lo) / bins`` onwards. Bin indices are computed in float32
        (float64 for float64 input), so a voxel lying exactly on an edge may land one bin away
        from NumPy's choice.

    Example
    -------
    >>> counts, lo, hi = masked_histogram(torch.tensor([[[0.0, 1, 2, 3]]]), bins=2)
    >>> counts.tolist(), lo.tolist(), hi.tolist()
    ([[2, 2]], [0.0], [3.0])
    """
    if int(bins) < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    values, valid = _rows(x, mask, channel_wise)
    counts, lo, hi = _histogram_rows(values, valid, int(bins))
    return _unrows(counts, x, channel_wise), _unrows(lo, x, channel_wise), _unrows(hi, x, channel_wise)


def percentile(
    x: torch.Tensor,
    q: float | Sequence[float] | torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    channel_wise: bool = False,
    bins: int = DEFAULT_BINS,
) -> torch.Tensor:
    """Per-sample percentiles of a batch from a fine histogram, like ``numpy.percentile`` (linear).

    Parameters
    ----------
    x:
        Batch ``[B, C, D, H, W]`` of any real dtype (computed in float32, or float64 for float64).
    q:
        Percentile(s) in ``[0, 100]``: a number or a sequence/1-D tensor of ``Q`` numbers.
    mask:
        Optional boolean tensor broadcastable to ``x`` (e.g. ``[B, 1, D, H, W]``): only its True
        voxels enter the statistics.
    channel_wise:
        Percentiles of each channel separately instead of all channels of a sample together.
    bins:
        Number of histogram bins per row (at least 16); the result is within
        ``(max - min) / bins`` of NumPy's. The default, ``2**16``, gives 1.5e-5 of the range.

    Returns
    -------
    torch.Tensor
        ``[B, Q]`` (``[B, C, Q]`` if ``channel_wise``) in the compute dtype; NaN for a sample
        without valid voxels or with NaN among them (as NumPy). ``q = 0`` and ``100`` give the
        exact minimum and maximum.

    Notes
    -----
    NumPy's linear method reads the order statistics ``v[j]`` and ``v[j + 1]`` with
    ``j = floor(q / 100 * (n - 1))`` and interpolates between them. Each order statistic is
    estimated here by spreading the values of its bin evenly inside the bin, so the estimate
    is within one bin width of the true value, and so is the interpolated percentile. The work is
    a handful of elementwise passes and one ``index_add_`` (no sort, no host synchronisation),
    for all samples of the batch at once.

    References
    ----------
    Hyndman, R. J. and Fan, Y. (1996), Sample quantiles in statistical packages, *The American
    Statistician* 50(4), 361-365 (NumPy's ``linear`` method is their definition 7).

    Example
    -------
    >>> x = torch.arange(101.0).reshape(1, 1, 101)
    >>> [round(v, 3) for v in percentile(x, [0, 2.5, 50, 100])[0].tolist()]
    [0.0, 2.5, 50.001, 100.0]
    """
    bins = int(bins)
    if bins < 16:
        raise ValueError(f"bins must be at least 16, got {bins}")
    values, valid = _rows(x, mask, channel_wise)
    dtype, device = values.dtype, values.device
    if isinstance(q, torch.Tensor) and q.device.type != "cpu":
        qs = q.to(torch.float64).reshape(-1)
    else:
        qs = torch.as_tensor(q, dtype=torch.float64).reshape(-1)
        if qs.numel() == 0 or bool(((qs < 0) | (qs > 100) | torch.isnan(qs)).any()):
            raise ValueError(f"percentiles must be at least one number in [0, 100], got {qs.tolist()}")
        qs = qs.to(device)

    counts, lo, hi = _histogram_rows(values, valid, bins)
    cum = counts.cumsum(dim=1)
    count = cum[:, -1]  # valid voxels per row
    width = torch.where(count > 0, (hi - lo) / bins, torch.zeros_like(lo))

    # Order statistics to read: j and j + 1 around rank h = q / 100 * (n - 1) (as NumPy).
    last = (count - 1).clamp(min=0)
    h = qs[None, :] / 100.0 * last[:, None].to(torch.float64)  # [R, Q]
    j0 = torch.minimum(h.floor().long(), last[:, None])
    frac = (h - j0.to(torch.float64)).to(dtype)
    j1 = torch.minimum(j0 + 1, last[:, None])
    ranks = torch.cat([j0, j1], dim=1)  # [R, 2Q]

    where = torch.searchsorted(cum, ranks.contiguous(), right=True).clamp_(max=bins - 1)
    upto = cum.gather(1, where)
    inside = counts.gather(1, where)
    offset = (ranks - (upto - inside)).to(dtype).add_(0.5) / inside.clamp(min=1).to(dtype)
    estimate = lo[:, None] + width[:, None] * (where.to(dtype) + offset)
    estimate = torch.minimum(torch.maximum(estimate, lo[:, None]), hi[:, None])
    estimate = torch.where(ranks == 0, lo[:, None].expand_as(estimate), estimate)
    estimate = torch.where(ranks == last[:, None], hi[:, None].expand_as(estimate), estimate)
    v0, v1 = estimate.chunk(2, dim=1)
    result = v0 + frac * (v1 - v0)
    bad = (count == 0) | torch.isnan(lo) | torch.isnan(hi)
    result = torch.where(bad[:, None], torch.full_like(result, float("nan")), result)
    return _unrows(result, x, channel_wise)
