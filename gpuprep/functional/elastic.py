"""Smooth displacement fields from a coarse grid of cubic B-spline control points."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from .axis_operators import cubic_bspline_weights


def bspline_taps(n_voxels: int, n_control: int) -> tuple[np.ndarray, np.ndarray]:
    """Per voxel, the first of the four control points whose cubic B-splines reach it, and their weights.

    Returns ``first`` ``[n_voxels]`` (int64) and ``weights`` ``[n_voxels, 4]`` (float64): voxel
    ``i`` is ``sum_k weights[i, k] * c[first[i] + k]``. The ``n_control`` points are spaced
    ``h = (n_voxels - 1) / (n_control - 3)`` voxels apart, the second one on the first voxel and
    the second last on the last voxel (ITK's mesh of ``n_control - 3`` cells over the image); the
    spline approximates (no prefilter), as ITK's ``BSplineTransform`` does with its coefficients.

    Example
    -------
    >>> first, weights = bspline_taps(5, 4)
    >>> first.tolist(), weights.sum(axis=1).round(12).tolist()  # a partition of unity
    ([0, 0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0, 1.0])
    """
    spacing = (n_voxels - 1) / (n_control - 3) if n_voxels > 1 else 1.0
    position = np.arange(n_voxels) / spacing + 1.0  # in control-point units
    low = np.clip(np.floor(position).astype(np.int64), 1, n_control - 3)
    return low - 1, np.stack(cubic_bspline_weights(position - low), axis=1)


def bspline_basis(n_voxels: int, n_control: int) -> np.ndarray:
    """``[n_voxels, n_control]`` weights of the cubic B-spline control points at every voxel (see :func:`bspline_taps`).

    Example
    -------
    >>> bspline_basis(5, 4).sum(axis=1).round(12).tolist()  # a partition of unity
    [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    first, weights = bspline_taps(n_voxels, n_control)
    basis = np.zeros((n_voxels, n_control))
    for tap in range(4):
        basis[np.arange(n_voxels), first + tap] = weights[:, tap]
    return basis


def bspline_rows(coefficients: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The field's control points contracted along D and H: ``[B, 3, D, H, nW]`` for a field of ``shape``.

    What is left is one cubic B-spline per image row along W: :func:`rows_to_field` evaluates it
    (and so does the numba warp kernel, voxel by voxel, with the same arithmetic).

    Example
    -------
    >>> bspline_rows(torch.ones(1, 3, 5, 5, 6), (6, 7, 8)).shape
    torch.Size([1, 3, 6, 7, 6])
    """
    batch, components, n_d, n_h, n_w = coefficients.shape
    depth, height = int(shape[0]), int(shape[1])
    basis_d, basis_h = (torch.as_tensor(bspline_basis(n, m), dtype=coefficients.dtype, device=coefficients.device)
                        for n, m in ((depth, n_d), (height, n_h)))
    rows = torch.matmul(basis_h, coefficients)  # [B, 3, nD, H, nW]
    rows = torch.matmul(basis_d, rows.reshape(batch, components, n_d, height * n_w))
    return rows.reshape(batch, components, depth, height, n_w)


def rows_to_field(rows: torch.Tensor, first: np.ndarray, weights: np.ndarray) -> torch.Tensor:
    """The dense field ``[B, 3, D, H, W]`` from :func:`bspline_rows` and the W axis's :func:`bspline_taps`.

    Each voxel is ``((r[f] w0 + r[f+1] w1) + r[f+2] w2) + r[f+3] w3`` in the rows' dtype (the
    weights cast to it), in that order: the numba warp kernel repeats it bit for bit.
    """
    taps = torch.as_tensor(weights, dtype=rows.dtype, device=rows.device)
    first = np.asarray(first)
    starts = [0, *(np.flatnonzero(np.diff(first)) + 1).tolist(), len(first)]
    field = rows.new_empty((*rows.shape[:-1], len(first)))
    scratch = rows.new_empty((*rows.shape[:-1], max(b - a for a, b in itertools.pairwise(starts))))
    for start, stop in itertools.pairwise(starts):  # the voxels of one B-spline cell share their 4 rows
        cell, weight = int(first[start]), taps[start:stop]
        block, product = field[..., start:stop], scratch[..., : stop - start]
        torch.mul(rows[..., cell: cell + 1], weight[:, 0], out=block)
        for tap in range(1, 4):
            block.add_(torch.mul(rows[..., cell + tap: cell + tap + 1], weight[:, tap], out=product))
    return field


def bspline_field(coefficients: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Dense field ``[B, 3, D, H, W]`` from control-point values ``[B, 3, nD, nH, nW]``, separably.

    Example
    -------
    >>> bspline_field(torch.ones(1, 3, 5, 5, 5), (6, 7, 8)).shape
    torch.Size([1, 3, 6, 7, 8])
    """
    return rows_to_field(bspline_rows(coefficients, shape), *bspline_taps(int(shape[2]), coefficients.shape[4]))
