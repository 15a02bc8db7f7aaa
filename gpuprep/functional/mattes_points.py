"""Mattes mutual information of scattered samples, with the fixed side prepared once: registration's inner metric.

Within a pyramid level of a registration the fixed samples never change, so their bins are
computed once (:func:`fixed_bins`); each iteration only spreads the moving values over the
joint histogram. :func:`point_mutual_information` gives the value of
:func:`~gpuprep.functional.similarity.mutual_information` on the same samples and ranges (the
same Parzen windows and bin layout), with its derivative written out instead of recorded by
autograd. With ``p`` the joint histogram normalised to sum 1 and ``p_m`` its moving marginal,

``d MI / d m_i = s * sum_j beta3'(j - t_i) (log p(k_i, j) - log p_m(j)) / N``

where ``k_i`` is the fixed bin of sample ``i``, ``t_i`` its moving bin position, ``s`` the bins
per intensity unit and ``N`` the number of samples (the terms that are constant along ``j``
vanish, because the cubic B-spline's derivatives sum to zero). On the CPU with numba each pass
is one compiled loop over the samples; elsewhere it is a few tensor operations.

Example
-------
>>> fixed = torch.rand(1, 500, generator=torch.Generator().manual_seed(0))
>>> moving = (fixed * 2.0).requires_grad_()
>>> prepared = fixed_bins(fixed, torch.tensor([[0.0, 1.0]]), bins=16)
>>> mi = point_mutual_information(prepared, moving, torch.tensor([[0.0, 2.0]]))
>>> mi.backward(); bool(mi > 1.5), moving.grad.shape
(True, torch.Size([1, 500]))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from .axis_operators import cubic_bspline_weights
from .numba_threads import pick_kernel
from .transform_models import _point_kernels

__all__ = ["FixedBins", "fixed_bins", "point_mutual_information"]


@dataclass(frozen=True)
class FixedBins:
    """The fixed side of a joint histogram: each sample's bin ``[B, N]`` (int64) and weight ``[B, N]`` (0 or 1)."""

    index: torch.Tensor
    weight: torch.Tensor
    bins: int


def fixed_bins(values: torch.Tensor, value_range: torch.Tensor, bins: int = 32) -> FixedBins:
    """Bin the fixed samples ``values [B, N]`` once, as :func:`~gpuprep.functional.similarity.joint_histogram` does.

    Parameters
    ----------
    values:
        The fixed samples; NaN marks a sample that is not used (outside the mask).
    value_range:
        ``[B, 2]``: each sample's ``(low, high)``; ``low`` lands in bin 1 and ``high`` in bin ``bins - 2``.
    bins:
        Bins per axis, at least 4.

    Example
    -------
    >>> fixed_bins(torch.tensor([[0.0, 0.5, float("nan")]]), torch.tensor([[0.0, 1.0]]), bins=5).index.tolist()
    [[1, 2, 1]]
    """
    if bins < 4:
        raise ValueError(f"fixed_bins: bins must be at least 4, got {bins}")
    inside = torch.isfinite(values)
    position = _positions(torch.where(inside, values, value_range[:, :1].to(values.dtype)), value_range, bins)
    return FixedBins(torch.floor(position + 0.5).long(), inside.to(values.dtype), bins)


def point_mutual_information(fixed: FixedBins, moving: torch.Tensor, moving_range: torch.Tensor,
                             inside: torch.Tensor | None = None) -> torch.Tensor:
    """Mattes mutual information ``[B]`` (nats) of :func:`fixed_bins` and the moving samples ``[B, N]``, differentiable.

    ``moving_range`` ``[B, 2]`` is each sample's ``(low, high)``; values beyond it are clamped (and
    get no gradient). ``inside`` ``[B, N]`` (bool), if given, leaves out the samples where it is
    False as well: in registration, the points that the transform maps outside the moving image.
    The result has ``moving``'s dtype; the histogram and the logarithms are float64.
    """
    if inside is not None:
        fixed = dataclasses.replace(fixed, weight=fixed.weight * inside.to(fixed.weight.dtype))
    low = moving_range[:, 0].to(torch.float64)
    span = (moving_range[:, 1] - moving_range[:, 0]).to(torch.float64)
    scale = torch.where(span > 0, (fixed.bins - 3) / torch.where(span > 0, span, 1.0), 0.0)
    return _MutualInformation.apply(moving, fixed, low, scale)


class _MutualInformation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, moving, fixed, low, scale):
        joint = _joint_histogram(fixed, moving.detach(), low, scale)
        total = joint.sum(dim=(1, 2), keepdim=True).clamp(min=1e-300)
        p = joint / total
        log_p = torch.log(torch.where(p > 0, p, 1.0))
        marginal_moving = p.sum(dim=1, keepdim=True)
        marginal_fixed = p.sum(dim=2)
        mi = (p * (log_p - torch.log(torch.where(marginal_moving > 0, marginal_moving, 1.0)))).sum(dim=(1, 2))
        mi = mi - (marginal_fixed * torch.log(torch.where(marginal_fixed > 0, marginal_fixed, 1.0))).sum(dim=1)
        gain = (log_p - torch.log(torch.where(marginal_moving > 0, marginal_moving, 1.0))) / total
        ctx.save_for_backward(moving.detach(), low, scale, gain)
        ctx.fixed = fixed
        return mi.to(moving.dtype)

    @staticmethod
    def backward(ctx, grad_mi):
        moving, low, scale, gain = ctx.saved_tensors
        gradient = _moving_gradient(ctx.fixed, moving, low, scale, gain)
        return (grad_mi.to(torch.float64)[:, None] * gradient).to(moving.dtype), None, None, None


def _positions(values: torch.Tensor, value_range: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin coordinates ``1 + (bins - 3) (v - low) / (high - low)``, clamped to ``[1, bins - 2]``."""
    low = value_range[:, :1].to(values.dtype)
    span = (value_range[:, 1:] - value_range[:, :1]).to(values.dtype)
    scale = torch.where(span > 0, (bins - 3) / torch.where(span > 0, span, 1.0), 0.0)
    return 1.0 + ((values - low) * scale).clamp(0.0, bins - 3.0)


def _kernels(moving: torch.Tensor) -> ModuleType | None:
    return _point_kernels() if moving.device.type == "cpu" else None


def _joint_histogram(fixed: FixedBins, moving: torch.Tensor, low: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The joint histogram ``[B, bins, bins]`` (float64): fixed samples in one bin, moving ones over four."""
    batch, bins = moving.shape[0], fixed.bins
    kernels = _kernels(moving)
    if kernels is not None:
        counts = np.zeros((batch, bins, bins))
        pick_kernel(kernels, "spread_moving")(*_arrays(fixed, moving, low, scale), counts)
        return torch.from_numpy(counts)
    cell, fraction, _ = _cells(moving, low, scale, bins)
    first = ((torch.arange(batch, device=moving.device)[:, None] * bins + fixed.index) * bins + cell - 1).reshape(-1)
    joint = torch.zeros(batch * bins * bins, dtype=torch.float64, device=moving.device)
    for tap, tap_weight in enumerate(cubic_bspline_weights(fraction)):
        joint.index_add_(0, first + tap, (tap_weight * fixed.weight.to(torch.float64)).reshape(-1))
    return joint.reshape(batch, bins, bins)


def _moving_gradient(fixed: FixedBins, moving: torch.Tensor, low: torch.Tensor, scale: torch.Tensor,
                     gain: torch.Tensor) -> torch.Tensor:
    """``d MI / d moving`` ``[B, N]`` (float64) from ``gain = (log p - log p_m) / N``."""
    bins = fixed.bins
    kernels = _kernels(moving)
    if kernels is not None:
        out = np.empty(moving.shape)
        pick_kernel(kernels, "moving_gradient")(*_arrays(fixed, moving, low, scale),
                                                np.ascontiguousarray(gain.numpy()), out)
        return torch.from_numpy(out)
    cell, fraction, unclamped = _cells(moving, low, scale, bins)
    rows = torch.gather(gain, 1, fixed.index[..., None].expand(-1, -1, bins))  # [B, N, bins]
    one = 1.0 - fraction
    slopes = (-0.5 * one**2, 1.5 * fraction**2 - 2.0 * fraction, -1.5 * fraction**2 + fraction + 0.5,
              0.5 * fraction**2)
    total = sum(slope * torch.gather(rows, 2, (cell - 1 + tap)[..., None])[..., 0] for tap, slope in enumerate(slopes))
    return total * fixed.weight.to(torch.float64) * unclamped * scale[:, None]


def _cells(moving: torch.Tensor, low: torch.Tensor, scale: torch.Tensor, bins: int):
    """Per sample: the cell ``floor(t)`` in ``[1, bins - 3]``, the fraction ``t - cell`` and 1 where not clamped."""
    raw = (moving.to(torch.float64) - low[:, None]) * scale[:, None]
    position = 1.0 + raw.clamp(0.0, bins - 3.0)
    cell = torch.floor(position).clamp(1, bins - 3)
    return cell.long(), position - cell, ((raw >= 0) & (raw <= bins - 3)).to(torch.float64)


def _arrays(fixed: FixedBins, moving: torch.Tensor, low: torch.Tensor, scale: torch.Tensor) -> tuple:
    """The kernels' NumPy views: fixed bins, weights, moving samples, lows and scales."""
    return (np.ascontiguousarray(fixed.index.numpy()), np.ascontiguousarray(fixed.weight.to(torch.float64).numpy()),
            np.ascontiguousarray(moving.to(torch.float64).numpy()), np.ascontiguousarray(low.numpy()),
            np.ascontiguousarray(scale.numpy()))
