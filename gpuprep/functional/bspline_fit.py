"""Cubic B-spline lattices fitted to, and evaluated on, a regular grid: separable, batched, no per-voxel loop.

The lattice follows ITK's ``BSplineScatteredDataPointSetToImageFilter`` layout: along an axis of
``n`` voxels, ``n_control`` control points span ``n_control - 3`` mesh cells over the voxel
centres ``0 .. n - 1`` (see :func:`gpuprep.functional.elastic.bspline_taps`). Because the weights
of a grid point are a tensor product of one weight vector per axis, both the fit and the
evaluation are three small matrix products per volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .axis_operators import cubic_bspline_weights

__all__ = ["bspline_basis_at", "evaluate_lattice", "evaluate_lattices", "fit_lattice", "grid_bases", "lattice_weights"]


def bspline_basis_at(positions: np.ndarray, n_control: int) -> np.ndarray:
    """``[len(positions), n_control]`` cubic B-spline weights at ``positions`` given in mesh-cell units.

    A position ``u`` in ``[0, n_control - 3]`` lies in cell ``floor(u)`` and is reached by the
    control points ``floor(u) .. floor(u) + 3``; the last position belongs to the last cell (as in
    ITK). Positions a little outside the mesh use the polynomial of the nearest end cell.

    Example
    -------
    >>> bspline_basis_at(np.array([0.0, 0.5, 1.0]), 4).sum(axis=1).round(12).tolist()
    [1.0, 1.0, 1.0]
    """
    if n_control < 4:
        raise ValueError(f"bspline_basis_at: n_control must be at least 4 (cubic), got {n_control}")
    positions = np.asarray(positions, dtype=np.float64) + 1.0  # index of the first control point is cell - 1
    low = np.clip(np.floor(positions).astype(np.int64), 1, n_control - 3)
    weights = np.stack(cubic_bspline_weights(positions - low), axis=1)
    basis = np.zeros((len(positions), n_control))
    rows = np.arange(len(positions))
    for tap in range(4):
        basis[rows, low - 1 + tap] = weights[:, tap]
    return basis


def grid_bases(shape: Sequence[int], n_control: Sequence[int], device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """One basis ``[n_voxels, n_control]`` per axis for a lattice spanning the whole grid ``shape``.

    Example
    -------
    >>> [tuple(b.shape) for b in grid_bases((5, 6, 7), (4, 5, 4))]
    [(5, 4), (6, 5), (7, 4)]
    """
    bases = []
    for size, count in zip(shape, n_control):
        cells = count - 3
        positions = np.arange(size) * (cells / (size - 1) if size > 1 else 0.0)
        bases.append(torch.as_tensor(bspline_basis_at(positions, count), dtype=dtype, device=device))
    return bases


def _contract(volume: torch.Tensor, bases: Sequence[torch.Tensor], transpose: bool) -> torch.Tensor:
    """Multiply ``volume [B, a, b, c]`` along each spatial axis by a basis (``transpose``: by its transpose).

    Written as three matrix products that need no transposed copies of the volume: the last axis
    on the right, the middle axis by broadcasting, the first axis on the flattened planes.
    """
    basis_d, basis_h, basis_w = (basis.t() for basis in bases) if transpose else bases
    out = volume @ basis_w.t()  # [B, a, b, W']
    out = basis_h @ out  # [B, a, H', W']
    batch, rows, height, width = out.shape
    return (basis_d @ out.reshape(batch, rows, height * width)).reshape(batch, -1, height, width)


def evaluate_lattices(lattices: Sequence[torch.Tensor], bases: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """The sum of several lattices' splines (one basis triple each) on one grid, built in one final product.

    Each lattice is contracted along W and H; the results are stacked along the lattice's D axis
    so that a single matrix product makes the full-size volume ``[B, D, H, W]``.

    Example
    -------
    >>> coarse, fine = grid_bases((6, 6, 6), (4, 4, 4)), grid_bases((6, 6, 6), (5, 5, 5))
    >>> lattices = [torch.ones(1, 4, 4, 4), torch.ones(1, 5, 5, 5)]
    >>> evaluate_lattices(lattices, [coarse, fine]).sub(2.0).abs().max().item() < 1e-5
    True
    """
    partial, depth = [], []
    for lattice, (basis_d, basis_h, basis_w) in zip(lattices, bases):
        partial.append(basis_h @ (lattice @ basis_w.t()))  # [B, n0, H, W]
        depth.append(basis_d)
    stacked = torch.cat(partial, dim=1)
    rows = torch.cat(depth, dim=1)  # [D, sum n0]
    batch, count, height, width = stacked.shape
    return (rows @ stacked.reshape(batch, count, height * width)).reshape(batch, -1, height, width)


def evaluate_lattice(lattice: torch.Tensor, bases: Sequence[torch.Tensor]) -> torch.Tensor:
    """The spline of ``lattice [B, n0, n1, n2]`` at the grid points of ``bases``: ``[B, D, H, W]``.

    Example
    -------
    >>> bases = grid_bases((6, 6, 6), (4, 4, 4))
    >>> evaluate_lattice(torch.full((1, 4, 4, 4), 2.0), bases).sub(2.0).abs().max().item() < 1e-6
    True
    """
    return _contract(lattice, bases, transpose=False)


def fit_lattice(values: torch.Tensor, weights: torch.Tensor, bases: Sequence[torch.Tensor],
                omega: torch.Tensor | None = None) -> torch.Tensor:
    """One level of Lee, Wolberg and Shin's B-spline approximation of ``values`` on the grid.

    ITK's ``BSplineScatteredDataPointSetToImageFilter`` with one fitting level, every grid voxel a
    data point with its weight ``w`` (0 outside the mask): with ``t_k`` the tensor-product basis
    weights of a voxel, control point ``k`` gets ``sum(w t_k^3 z / sum_j t_j^2) / sum(w t_k^2)``
    (0 where no voxel reaches it). This is an approximation, not a projection: a single point is
    interpolated exactly, but dense data are smoothed (and a constant is not reproduced at the
    grid's edges); N4 relies on its iterations to refit what is left.

    Parameters
    ----------
    values, weights:
        ``[B, D, H, W]``: the data ``z`` and the per-voxel weights (a mask as 0/1, or confidences).
    bases:
        :func:`grid_bases` of the grid.
    omega:
        The denominator ``sum(w t_k^2)``, when the caller reuses it across fits with the same weights.

    Returns
    -------
    The control points ``[B, n0, n1, n2]``.

    Example
    -------
    >>> bases = grid_bases((8, 8, 8), (4, 4, 4))
    >>> weights = torch.zeros(1, 8, 8, 8); weights[0, 2, 5, 3] = 1.0     # one data point
    >>> lattice = fit_lattice(torch.full((1, 8, 8, 8), 3.0), weights, bases)
    >>> round(evaluate_lattice(lattice, bases)[0, 2, 5, 3].item(), 5)    # is interpolated exactly
    3.0
    """
    squares = [basis.square() for basis in bases]
    if omega is None:
        omega = lattice_weights(weights, bases)
    norm = squares[0].sum(1)[:, None, None] * squares[1].sum(1)[:, None] * squares[2].sum(1)
    delta = _contract(weights * values / norm, [s * b for s, b in zip(squares, bases)], transpose=True)
    return torch.where(omega > 0, delta / omega.clamp(min=torch.finfo(omega.dtype).tiny), torch.zeros_like(delta))


def lattice_weights(weights: torch.Tensor, bases: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum(w t_k^2)`` per control point: the denominator of :func:`fit_lattice`, ``[B, n0, n1, n2]``.

    Example
    -------
    >>> lattice_weights(torch.ones(1, 5, 5, 5), grid_bases((5, 5, 5), (4, 4, 4))).shape
    torch.Size([1, 4, 4, 4])
    """
    return _contract(weights, [basis.square() for basis in bases], transpose=True)
