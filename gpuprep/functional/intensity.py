"""Intensity maps on batched tensors ``[B, C, D, H, W]``: linear rescaling, clipping, z-scores.

Per-sample statistics arrive as tensors ``[B]`` (one value per sample) or ``[B, C]`` (one per
channel) and are broadcast over the voxels; nothing is read back to the host. Every function
computes in float32 (float64 for float64 input) and returns the input's floating dtype.
"""

from __future__ import annotations

import torch

__all__ = [
    "broadcast_stat",
    "clip_intensity",
    "mask_fill",
    "masked_mean_std",
    "rescale_linear",
    "scale_intensity_range",
    "z_normalize",
]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def broadcast_stat(stat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a per-sample ``[B]`` or per-channel ``[B, C]`` statistic so it broadcasts over ``x``.

    Example
    -------
    >>> broadcast_stat(torch.zeros(2), torch.zeros(2, 3, 4, 4, 4)).shape
    torch.Size([2, 1, 1, 1, 1])
    """
    stat = torch.as_tensor(stat, device=x.device)
    return stat.reshape(*stat.shape, *([1] * (x.ndim - stat.ndim)))


def rescale_linear(
    x: torch.Tensor,
    in_low: torch.Tensor,
    in_high: torch.Tensor,
    out_low: float,
    out_high: float,
    clip: bool = True,
) -> torch.Tensor:
    """Map ``in_low -> out_low`` and ``in_high -> out_high`` linearly, per sample (or channel).

    ``in_low``/``in_high`` are ``[B]`` or ``[B, C]``. The arithmetic follows TorchIO's
    ``RescaleIntensity`` step by step (subtract, divide by the input range, multiply by the output
    range, add) so float32 results agree to the last bit or two. With ``clip`` the result is
    clamped to the output range (the same as clamping the input to ``in_low..in_high`` first, as
    TorchIO does). Where ``in_high <= in_low`` or a bound is not finite (a constant sample, an
    empty mask) the sample is returned unchanged.

    Example
    -------
    >>> x = torch.tensor([0.0, 5.0, 10.0, 20.0]).reshape(1, 1, 4)
    >>> rescale_linear(x, torch.tensor([0.0]), torch.tensor([10.0]), 0.0, 1.0).tolist()
    [[[0.0, 0.5, 1.0, 1.0]]]
    """
    dtype = _compute_dtype(x)
    values = x.to(dtype)
    low = broadcast_stat(in_low.to(dtype), values)
    high = broadcast_stat(in_high.to(dtype), values)
    span = high - low
    ok = torch.isfinite(span) & (span > 0)
    safe_low = torch.where(ok, low, torch.zeros_like(low))
    safe_span = torch.where(ok, span, torch.ones_like(span))
    out = (values - safe_low) / safe_span * (out_high - out_low) + out_low
    if clip:
        out = out.clamp(min(out_low, out_high), max(out_low, out_high))
    return torch.where(ok, out, values).to(_out_dtype(x))


def scale_intensity_range(
    x: torch.Tensor,
    a_min: float,
    a_max: float,
    b_min: float | None,
    b_max: float | None,
    clip: bool = False,
) -> torch.Tensor:
    """MONAI's ``ScaleIntensityRange``: ``(x - a_min) / (a_max - a_min) * (b_max - b_min) + b_min``.

    Without ``b_min``/``b_max`` (both None) only the first division is done. ``clip`` clamps the
    result to ``[b_min, b_max]``. ``a_min == a_max`` is rejected (MONAI warns and shifts).

    Example
    -------
    >>> x = torch.tensor([-1000.0, 0.0, 1000.0]).reshape(1, 1, 3)
    >>> scale_intensity_range(x, -1000, 1000, 0, 1).tolist()
    [[[0.0, 0.5, 1.0]]]
    """
    if a_max == a_min:
        raise ValueError(f"a_min and a_max must differ, got {a_min!r} and {a_max!r}")
    values = x.to(_compute_dtype(x))
    out = (values - a_min) / (a_max - a_min)
    if b_min is not None and b_max is not None:
        out = out * (b_max - b_min) + b_min
    if clip:
        out = out.clamp(b_min, b_max)
    return out.to(_out_dtype(x))


def clip_intensity(x: torch.Tensor, low: float | None = None, high: float | None = None) -> torch.Tensor:
    """Clamp intensities to ``[low, high]`` (either bound may be None).

    Example
    -------
    >>> clip_intensity(torch.tensor([-2.0, 0.5, 3.0]), 0, 1).tolist()
    [0.0, 0.5, 1.0]
    """
    return x.clamp(low, high)


def masked_mean_std(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    channel_wise: bool = False,
    correction: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, standard deviation and voxel count of the masked voxels of every sample.

    Parameters
    ----------
    x:
        Batch ``[B, C, D, H, W]``.
    mask:
        Optional boolean tensor broadcastable to ``x`` (e.g. ``[B, 1, D, H, W]``).
    channel_wise:
        Statistics per channel (``[B, C]``) instead of per sample (``[B]``).
    correction:
        Degrees of freedom subtracted from the count in the variance: 1 is the unbiased
        (sample) standard deviation of ``torch.std`` and TorchIO, 0 the population one of
        ``numpy.std`` and MONAI.

    Returns
    -------
    mean, std, count:
        The variance is computed in two passes (around the mean) for accuracy; ``std`` is NaN
        where ``count <= correction`` and ``mean`` is NaN for an empty mask.

    Example
    -------
    >>> mean, std, n = masked_mean_std(torch.tensor([1.0, 2.0, 3.0, 0.0]).reshape(1, 1, 4), correction=0,
    ...                                mask=torch.tensor([True, True, True, False]).reshape(1, 1, 4))
    >>> round(mean.item(), 4), round(std.item(), 4), n.item()
    (2.0, 0.8165, 3)
    """
    dtype = _compute_dtype(x)
    values = x.to(dtype)
    lead = 2 if channel_wise else 1
    dims = tuple(range(lead, x.ndim))
    if mask is None:
        per_row = values[(0,) * lead].numel()
        count = torch.full(x.shape[:lead], per_row, device=x.device, dtype=torch.int64)
        mean = values.mean(dim=dims)
        centred = values - broadcast_stat(mean, values)
    else:
        mask = torch.broadcast_to(mask.to(device=x.device, dtype=torch.bool), x.shape)
        count = mask.sum(dim=dims)
        zero = torch.zeros((), dtype=dtype, device=x.device)
        mean = torch.where(mask, values, zero).sum(dim=dims) / count.to(dtype)
        centred = torch.where(mask, values - broadcast_stat(mean, values), zero)
    var = centred.square().sum(dim=dims) / (count - correction).clamp(min=1).to(dtype)
    var = torch.where(count > correction, var, torch.full_like(var, float("nan")))
    return mean, var.sqrt(), count


def z_normalize(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    inside: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(x - mean) / std`` per sample (or channel); a zero or undefined ``std`` divides by 1.

    ``mean``/``std`` are ``[B]`` or ``[B, C]``. A NaN ``mean`` (empty mask) leaves the sample
    unchanged. With ``inside`` (a boolean tensor broadcastable to ``x``) only those voxels are
    normalised and the others keep their value (MONAI's ``nonzero=True``).

    Example
    -------
    >>> x = torch.tensor([1.0, 3.0]).reshape(1, 1, 2)
    >>> z_normalize(x, torch.tensor([2.0]), torch.tensor([1.0])).tolist()
    [[[-1.0, 1.0]]]
    """
    dtype = _compute_dtype(x)
    values = x.to(dtype)
    mean = broadcast_stat(mean.to(dtype), values)
    std = broadcast_stat(std.to(dtype), values)
    # Scale and shift are decided on the tiny [B, ...] statistics, so the volume is touched once.
    mean_ok = torch.isfinite(mean)
    scale = torch.where(mean_ok & torch.isfinite(std) & (std != 0), 1.0 / std, torch.ones_like(std))
    scale = torch.where(mean_ok, scale, torch.ones_like(scale))
    shift = torch.where(mean_ok, -mean * scale, torch.zeros_like(mean))
    out = torch.addcmul(shift, values, scale)
    if inside is not None:
        out = torch.where(inside.to(device=x.device, dtype=torch.bool), out, values)
    return out.to(_out_dtype(x))


def mask_fill(x: torch.Tensor, inside: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Set the voxels where ``inside`` is False to ``fill`` (``inside`` broadcasts to ``x``).

    Example
    -------
    >>> mask_fill(torch.tensor([1.0, 2.0]), torch.tensor([True, False]), -1).tolist()
    [1.0, -1.0]
    """
    fill_value = torch.tensor(fill, dtype=x.dtype, device=x.device)
    return torch.where(inside.to(device=x.device, dtype=torch.bool), x, fill_value)
