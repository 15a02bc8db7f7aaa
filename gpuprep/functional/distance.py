"""Exact Euclidean distance to a mask, up to a bound, in torch (no scipy): anisotropic voxels allowed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["distance_to_mask"]


def distance_to_mask(mask: torch.Tensor, spacing: Sequence[float], max_mm: float) -> torch.Tensor:
    """Euclidean distance (mm) of every voxel to the nearest voxel of ``mask``, exact up to ``max_mm``.

    A separable squared distance transform: along each axis in turn, ``g(x) = min_k g(x + k) +
    (k * spacing)^2`` over ``|k| <= max_mm / spacing``. Because the nearest mask voxel of a voxel
    within ``max_mm`` is within ``max_mm`` along every axis, the truncation changes nothing there:
    distances ``<= max_mm`` equal ``scipy.ndimage.distance_transform_edt(~mask, sampling=spacing)``
    (the axes are taken as orthogonal); farther voxels get a value ``> max_mm`` (or ``inf``).

    Parameters
    ----------
    mask:
        Boolean (or 0/1) volume ``[..., D, H, W]``; leading dimensions are independent volumes.
    spacing:
        Voxel size along ``D, H, W`` in mm.
    max_mm:
        Distance up to which the result is exact; the cost grows linearly with it.

    Example
    -------
    >>> m = torch.zeros(1, 1, 7, dtype=torch.bool)
    >>> m[0, 0, 3] = True
    >>> distance_to_mask(m, (1.0, 1.0, 2.0), max_mm=4.0)[0, 0].tolist()[3:]
    [0.0, 2.0, 4.0, inf]
    """
    mask = mask != 0
    dtype = torch.float32
    squared = torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device),
                          torch.full((), math.inf, dtype=dtype, device=mask.device))
    for axis, step in zip((-3, -2, -1), spacing):
        n = squared.shape[axis]
        reach = min(math.floor(max_mm / float(step)), n - 1)
        out = squared.clone()
        for k in range(1, reach + 1):
            weight = (k * float(step)) ** 2
            head, tail = out.narrow(axis, k, n - k), out.narrow(axis, 0, n - k)
            torch.minimum(head, squared.narrow(axis, 0, n - k) + weight, out=head)
            torch.minimum(tail, squared.narrow(axis, k, n - k) + weight, out=tail)
        squared = out
    return squared.sqrt_()
