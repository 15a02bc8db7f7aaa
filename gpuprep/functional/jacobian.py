"""Jacobian determinants of displacement fields, and the fraction of voxels where a field folds.

A displacement field ``u`` maps a point ``x`` to ``x + u(x)``; the local change of volume is
``det(I + du/dx)`` (1: volume kept, above 1: expansion, below 1: contraction, ``<= 0``: the
map folds and is no longer invertible there). Derivatives are finite differences exactly as
``numpy.gradient`` (``edge_order=1``) takes them, so the results can be checked against NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["folding_fraction", "jacobian_determinant", "per_sample_spacing"]


def _gradient(u: torch.Tensor, dim: int) -> torch.Tensor:
    """``numpy.gradient`` of ``u`` along ``dim`` (unit spacing, ``edge_order=1``); 0 along an axis of size 1."""
    n = u.shape[dim]
    if n < 2:
        return torch.zeros_like(u)
    first = u.narrow(dim, 1, 1) - u.narrow(dim, 0, 1)
    last = u.narrow(dim, n - 1, 1) - u.narrow(dim, n - 2, 1)
    if n == 2:
        return torch.cat([first, last], dim)
    inner = (u.narrow(dim, 2, n - 2) - u.narrow(dim, 0, n - 2)) * 0.5
    return torch.cat([first, inner, last], dim)


def per_sample_spacing(spacing: Any, batch: int, owner: str, like: torch.Tensor) -> torch.Tensor:
    """``spacing`` (None, a number, 3 values or ``[B, 3]``) as a ``[B, 3]`` tensor of positive steps like ``like``.

    Shared by the field functions (:mod:`gpuprep.functional.regularizers` too); the values are
    metadata, read on the host to check them.

    Example
    -------
    >>> per_sample_spacing(2.0, 2, "f", torch.zeros(1)).tolist()
    [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    """
    if spacing is None:
        return torch.ones(batch, 3, dtype=like.dtype, device=like.device)
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(spacing, dtype=np.float64)
    if array.ndim == 0:
        array = np.full((batch, 3), float(array))
    elif array.shape == (3,):
        array = np.broadcast_to(array, (batch, 3))
    elif array.shape != (batch, 3):
        raise ValueError(f"{owner}: spacing must be a number, 3 values or [B={batch}, 3], got shape {array.shape}")
    if not (np.isfinite(array).all() and (array > 0).all()):
        raise ValueError(f"{owner}: spacing must be finite and positive, got {array.tolist()}")
    return torch.tensor(array, dtype=like.dtype).to(like.device)  # a copy: broadcast_to gives a read-only view


def jacobian_determinant(displacement: torch.Tensor, spacing: Any = None) -> torch.Tensor:
    """``det(I + du/dx)`` of displacement fields ``[B, 3, D, H, W]`` at every voxel: ``[B, D, H, W]``.

    Component ``k`` of ``displacement`` is the displacement along array axis ``k`` (D, H, W), in
    the units of ``spacing``. ``du_k/dx_j`` is ``numpy.gradient(u_k, spacing_j, axis=j)``: central
    differences ``(u[i+1] - u[i-1]) / (2 h)`` inside, one-sided ``(u[1] - u[0]) / h`` and
    ``(u[-1] - u[-2]) / h`` on the border voxels; along an axis of a single voxel (where NumPy
    raises) the derivative is taken as 0. A linear field ``u(x) = A x`` therefore gives
    ``det(I + A)`` everywhere, border included. Differentiable with respect to ``displacement``.

    Parameters
    ----------
    displacement:
        Floating-point fields ``[B, 3, D, H, W]`` (half precision is computed in float32).
    spacing:
        Voxel size along D, H, W in the units of the displacement: 3 values, or one row per sample
        ``[B, 3]`` (metadata: a tensor is read on the host). ``None``: 1, i.e. displacements in voxels.

    Example
    -------
    >>> u = torch.zeros(1, 3, 4, 4, 4)
    >>> u[:, 0] = 0.5 * torch.arange(4.0).view(4, 1, 1)     # stretch axis D by 1.5
    >>> jacobian_determinant(u).unique().tolist()
    [1.5]
    >>> jacobian_determinant(u, spacing=(2.0, 1.0, 1.0)).unique().tolist()   # the same field in mm
    [1.25]
    """
    if not isinstance(displacement, torch.Tensor) or displacement.ndim != 5 or displacement.shape[1] != 3:
        shape = tuple(displacement.shape) if isinstance(displacement, torch.Tensor) else type(displacement).__name__
        raise ValueError(f"jacobian_determinant: displacement must be [B, 3, D, H, W], got {shape}")
    if not displacement.is_floating_point():
        raise TypeError(f"jacobian_determinant: displacement must be floating point, got {displacement.dtype}")
    u = displacement.float() if displacement.dtype in (torch.float16, torch.bfloat16) else displacement
    batch = u.shape[0]
    steps = per_sample_spacing(spacing, batch, "jacobian_determinant", u).view(batch, 3, 1, 1, 1)
    # g[k][j] = du_k / dx_j, each [B, D, H, W]
    g = [[_gradient(u[:, k], 1 + j) / steps[:, j] for j in range(3)] for k in range(3)]
    a, b, c = 1 + g[0][0], g[0][1], g[0][2]
    d, e, f = g[1][0], 1 + g[1][1], g[1][2]
    h, i, k = g[2][0], g[2][1], 1 + g[2][2]
    return a * (e * k - f * i) - b * (d * k - f * h) + c * (d * i - e * h)


def folding_fraction(determinant: torch.Tensor, mask: Any = None) -> torch.Tensor:
    """Fraction of the (masked) voxels of every sample where the Jacobian determinant is ``<= 0``: ``[B]``.

    Parameters
    ----------
    determinant:
        ``[B, D, H, W]`` from :func:`jacobian_determinant` (any ``[B, ...]`` works).
    mask:
        Optional boolean or 0/1 tensor broadcastable to ``determinant``; an image mask
        ``[B, 1, D, H, W]`` is accepted as well. Only its nonzero voxels count; a sample without
        any gives NaN.

    Returns
    -------
    float32 (float64 for a float64 ``determinant``) ``[B]`` in ``[0, 1]``. NaN determinants count as not folded.

    Example
    -------
    >>> det = torch.tensor([[1.0, 0.5, 0.0, -0.2]])
    >>> folding_fraction(det).tolist(), folding_fraction(det, det > 0.2).tolist()
    ([0.5], [0.0])
    """
    if not isinstance(determinant, torch.Tensor) or determinant.ndim < 2:
        shape = tuple(determinant.shape) if isinstance(determinant, torch.Tensor) else type(determinant).__name__
        raise ValueError(f"folding_fraction: determinant must be a batch [B, D, H, W], got {shape}")
    dtype = torch.float64 if determinant.dtype == torch.float64 else torch.float32
    folded = determinant <= 0
    if mask is None:
        return folded.flatten(1).to(dtype).mean(dim=1)
    mask = torch.as_tensor(mask, device=determinant.device)
    if mask.ndim == determinant.ndim + 1 and mask.shape[1] == 1:  # an image mask [B, 1, D, H, W]
        mask = mask.squeeze(1)
    try:
        inside = torch.broadcast_to(mask != 0, determinant.shape)
    except RuntimeError as error:
        raise ValueError(f"folding_fraction: mask {tuple(mask.shape)} does not broadcast to "
                         f"{tuple(determinant.shape)}") from error
    counted = (folded & inside).flatten(1).sum(dim=1).to(dtype)
    return counted / inside.flatten(1).sum(dim=1).to(dtype)
