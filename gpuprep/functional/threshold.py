"""Otsu's threshold from a histogram, for every sample of a batch at once."""

from __future__ import annotations

import torch

from .percentile import masked_histogram

__all__ = ["otsu_from_histogram", "otsu_threshold"]


def otsu_from_histogram(counts: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Otsu's threshold of histograms ``counts [..., bins]`` with bin ``centers [..., bins]``.

    The threshold is the centre of the bin ``i`` that maximises the between-class variance of
    the split "bins ``<= i``" vs "bins ``> i``", exactly as :func:`skimage.filters.threshold_otsu`
    computes it from its histogram (the first maximum wins). An all-empty histogram gives its first
    centre.

    Example
    -------
    >>> counts = torch.tensor([[5, 0, 0, 5]])
    >>> centers = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    >>> otsu_from_histogram(counts, centers).tolist()
    [0.0]
    """
    hist = counts.to(torch.float64)
    centers64 = centers.to(torch.float64)
    weight1 = hist.cumsum(-1)
    weight2 = hist.flip(-1).cumsum(-1).flip(-1)
    moment = hist * centers64
    mean1 = moment.cumsum(-1) / weight1.clamp(min=1e-300)
    mean2 = moment.flip(-1).cumsum(-1).flip(-1) / weight2.clamp(min=1e-300)
    variance = weight1[..., :-1] * weight2[..., 1:] * (mean1[..., :-1] - mean2[..., 1:]) ** 2
    if variance.shape[-1] == 0:
        return centers[..., 0]
    best = variance.argmax(dim=-1, keepdim=True)
    return centers.gather(-1, best).squeeze(-1)


def otsu_threshold(
    x: torch.Tensor, mask: torch.Tensor | None = None, bins: int = 256, *, channel_wise: bool = False
) -> torch.Tensor:
    """Otsu's threshold of every sample of a batch ``[B, C, D, H, W]``: a tensor ``[B]`` (``[B, C]``).

    Same definition as :func:`skimage.filters.threshold_otsu` with ``nbins=bins`` on a float
    image: a ``bins``-bin histogram over the sample's min..max, the threshold being a bin centre
    (foreground is ``x > threshold``). Bin indices are computed in float32, so voxels lying on a
    bin edge may be counted one bin away from NumPy's choice; the threshold then agrees with
    scikit-image's to within one bin width. (scikit-image uses one bin per value for integer
    images; here every image is treated as float.) A constant sample gives its value.

    Parameters
    ----------
    x:
        Batch ``[B, C, D, H, W]``.
    mask:
        Optional boolean tensor broadcastable to ``x``: only its voxels enter the histogram.
    bins:
        Number of histogram bins (scikit-image's ``nbins``), at least 2.
    channel_wise:
        One threshold per channel instead of one per sample.

    References
    ----------
    N. Otsu (1979), A threshold selection method from gray-level histograms, *IEEE Transactions
    on Systems, Man, and Cybernetics* 9(1), 62-66.

    Example
    -------
    >>> x = torch.cat([torch.zeros(50), torch.ones(50)]).reshape(1, 1, 100)
    >>> bool((x > otsu_threshold(x)[:, None, None]).sum() == 50)
    True
    """
    if int(bins) < 2:
        raise ValueError(f"bins must be at least 2, got {bins!r}")
    counts, lo, hi = masked_histogram(x, mask, int(bins), channel_wise=channel_wise)
    low = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    width = torch.where(torch.isfinite(hi - lo), (hi - lo) / int(bins), torch.zeros_like(lo))
    steps = torch.arange(int(bins), device=x.device, dtype=low.dtype) + 0.5
    centers = low[..., None] + width[..., None] * steps
    return otsu_from_histogram(counts, centers)
