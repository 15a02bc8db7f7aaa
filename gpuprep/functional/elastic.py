"""Smooth displacement fields from a coarse grid of cubic B-spline control points."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .axis_operators import cubic_bspline_weights


def bspline_basis(n_voxels: int, n_control: int) -> np.ndarray:
    """``[n_voxels, n_control]`` weights of the cubic B-spline control points at every voxel.

    The ``n_control`` points are spaced ``h = (n_voxels - 1) / (n_control - 3)`` voxels apart, the
    second one on the first voxel and the second last on the last voxel (ITK's mesh of
    ``n_control - 3`` cells over the image); the spline approximates (no prefilter), as ITK's
    ``BSplineTransform`` does with its coefficients.

    Example
    -------
    >>> bspline_basis(5, 4).sum(axis=1).round(12).tolist()  # a partition of unity
    [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    spacing = (n_voxels - 1) / (n_control - 3) if n_voxels > 1 else 1.0
    position = np.arange(n_voxels) / spacing + 1.0  # in control-point units
    low = np.clip(np.floor(position).astype(np.int64), 1, n_control - 3)
    frac = position - low
    basis = np.zeros((n_voxels, n_control))
    rows = np.arange(n_voxels)
    for tap, weight in enumerate(cubic_bspline_weights(frac)):
        basis[rows, low - 1 + tap] = weight
    return basis


def bspline_field(coefficients: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Dense field ``[B, 3, D, H, W]`` from control-point values ``[B, 3, nD, nH, nW]``, separably.

    Example
    -------
    >>> bspline_field(torch.ones(1, 3, 5, 5, 5), (6, 7, 8)).shape
    torch.Size([1, 3, 6, 7, 8])
    """
    batch, components, n_d = coefficients.shape[:3]
    depth, height, width = (int(n) for n in shape)
    basis = [torch.as_tensor(bspline_basis(n, m), dtype=coefficients.dtype, device=coefficients.device)
             for n, m in zip((depth, height, width), coefficients.shape[2:])]
    # W, then H, then D: the last and largest product is written contiguously, with no copy.
    field = torch.matmul(coefficients, basis[2].T)  # [B, 3, nD, nH, W]
    field = torch.matmul(basis[1], field)  # [B, 3, nD, H, W]
    field = torch.matmul(basis[0], field.reshape(batch, components, n_d, height * width))
    return field.reshape(batch, components, depth, height, width)
