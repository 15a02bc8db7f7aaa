"""One-dimensional resampling operators, applied one axis at a time.

A map that sends each output axis to one input axis (scalings, crops, pads, flips, axis
permutations: everything but rotations and shears) is separable, so a 3D resampling is three
1D resamplings. Each 1D resampling is a banded matrix ``W [n_out, n_in]`` built on the CPU in
float64 (tiny) and applied as a few ``index_select`` + multiply-add passes over the volume; this
is exact trilinear / tricubic interpolation, far cheaper than a full 3D ``grid_sample`` on the
CPU, and it folds anti-aliasing and the cubic B-spline prefilter into the same matrix.

Boundary rule (the ITK convention): a position within half a voxel of the first or last voxel
centre is inside and reads the clamped edge; a position further out reads ``fill`` (0), so a pad
is exact zeros and a rescaled grid has no dark rim.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

_SIGNIFICANT = 1e-9  # weights below this fraction of a row's largest are dropped from the band


@dataclass(frozen=True)
class AxisOperator:
    """A banded 1D resampling matrix: ``out[r] = sum_t weights[r, t] * in[index[r, t]]``."""

    index: np.ndarray  # [n_out, taps] int64
    weights: np.ndarray  # [n_out, taps] float64
    is_selection: bool  # every row is a single weight of exactly 1 or an all-zero row

    @property
    def size(self) -> int:
        return self.index.shape[0]


def axis_operator(
    positions: np.ndarray,
    n_in: int,
    mode: str = "linear",
    antialias_sigma: float = 0.0,
    padding_mode: str = "zeros",
) -> AxisOperator:
    """Build the operator that samples a length-``n_in`` signal at ``positions`` (input voxel units).

    Parameters
    ----------
    positions:
        Where each output sample reads the input, in input voxel coordinates.
    n_in:
        Length of the input axis.
    mode:
        ``"nearest"``, ``"linear"`` or ``"cubic"`` (B-spline with the exact prefilter,
        mirror boundary, as ``scipy.ndimage.map_coordinates(order=3, mode="mirror")``).
    antialias_sigma:
        Gaussian smoothing of the input (in input voxels, truncated at 4 sigma, edge values
        repeated beyond the border as ``scipy.ndimage``'s ``mode="nearest"``) folded into the
        operator; 0 for none.
    padding_mode:
        ``"zeros"`` (fill beyond half a voxel outside) or ``"border"`` (clamp everywhere).

    Example
    -------
    >>> op = axis_operator(np.array([0.0, 0.5, 1.0]), 2)
    >>> apply_axis_operator(torch.tensor([[[[[0.0, 2.0]]]]]), 4, op).flatten().tolist()
    [0.0, 1.0, 2.0]
    """
    positions = np.asarray(positions, dtype=np.float64)
    # Snap float noise (e.g. 2.0000000000000004 from composed maps) so exact maps stay exact.
    nearest_integer = np.round(positions)
    positions = np.where(np.abs(positions - nearest_integer) < 1e-9, nearest_integer, positions)
    matrix = _interpolation_matrix(positions, n_in, mode)
    if antialias_sigma > 0:
        matrix = matrix @ _gaussian_matrix(n_in, antialias_sigma)
    if padding_mode == "zeros":
        outside = (positions < -0.5 - 1e-9) | (positions > n_in - 0.5 + 1e-9)
        matrix[outside] = 0.0
    elif padding_mode != "border":
        raise ValueError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
    return _band(matrix)


def apply_axis_operator(volume: torch.Tensor, dim: int, operator: AxisOperator) -> torch.Tensor:
    """Resample ``volume`` along dimension ``dim`` with ``operator``.

    Selection operators (nearest neighbour, exact crops/pads/flips) only gather, so they keep
    any dtype, integer labels included, bit for bit.
    """
    moved = volume.movedim(dim, 0)
    rest = moved.shape[1:]
    rows = apply_to_rows(moved.reshape(moved.shape[0], -1), operator)
    return rows.reshape(operator.size, *rest).movedim(0, dim)


def apply_separable(volume: torch.Tensor, operators: list[AxisOperator | None]) -> torch.Tensor:
    """Apply one operator per spatial axis of ``[B, C, D, H, W]`` (None leaves an axis as is).

    The axis being resampled is always the outermost of a contiguous buffer, so each pass is a
    sparse-times-dense product (or a row gather) over whole rows: far faster on the CPU than
    gathering along an inner axis. Between passes the buffer is rotated by one axis
    ``(D, H, W, B, C) -> (H, W, B, C, D') -> (W, B, C, D', H') -> (B, C, D', H', W')``, so the
    result ends in the usual layout.
    """
    x = volume.permute(2, 3, 4, 0, 1).contiguous()
    for operator in operators:
        rest = x.shape[1:]
        if operator is not None:
            x = apply_to_rows(x.reshape(x.shape[0], -1), operator).reshape(operator.size, *rest)
        x = x.permute(1, 2, 3, 4, 0)  # a view; the next reshape makes it contiguous if needed
    return x.contiguous()


def apply_to_rows(rows: torch.Tensor, operator: AxisOperator) -> torch.Tensor:
    """``out[r] = sum_t weights[r, t] * rows[index[r, t]]`` for a 2D tensor ``[n_in, N]``."""
    device = rows.device
    if operator.is_selection:
        out = rows.index_select(0, torch.from_numpy(operator.index[:, 0]).to(device))
        keep = operator.weights[:, 0] != 0
        if not keep.all():
            mask = torch.from_numpy(keep).to(device)[:, None]
            out = torch.where(mask, out, torch.zeros((), dtype=out.dtype, device=device))
        return out
    if not rows.is_floating_point():
        raise TypeError(f"interpolating needs a floating-point volume, got {rows.dtype}; use mode='nearest'")
    if rows.dtype in (torch.float32, torch.float64):
        return _sparse_matrix(operator, rows.shape[0], rows.dtype, device) @ rows
    index = torch.from_numpy(operator.index).to(device)
    weights = torch.from_numpy(operator.weights).to(device=device, dtype=rows.dtype)
    out = rows.index_select(0, index[:, 0]) * weights[:, :1]
    for tap in range(1, index.shape[1]):
        out.addcmul_(rows.index_select(0, index[:, tap]), weights[:, tap : tap + 1])
    return out


def _sparse_matrix(operator: AxisOperator, n_in: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The operator as a sparse CSR matrix ``[n_out, n_in]`` (duplicate entries are summed)."""
    taps = operator.index.shape[1]
    rows = np.repeat(np.arange(operator.size), taps)
    indices = torch.from_numpy(np.stack([rows, operator.index.ravel()]))
    values = torch.from_numpy(operator.weights.ravel()).to(dtype)
    with warnings.catch_warnings():  # torch flags sparse CSR as beta; the product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_coo_tensor(indices, values, (operator.size, n_in)).coalesce().to_sparse_csr()
        return matrix.to(device)


def nearest_index(positions: np.ndarray) -> np.ndarray:
    """Round to the nearest voxel; exact ties (x.5) go up, whatever float noise composed maps carry."""
    return np.floor(positions + (0.5 + 1e-9)).astype(np.int64)


def chain_operators(first: AxisOperator, second: AxisOperator, n_in: int) -> AxisOperator:
    """The operator applying ``first`` (on a length-``n_in`` axis) and then ``second``, as one band.

    Example
    -------
    >>> down = axis_operator(np.array([0.5, 2.5]), 4, "nearest")
    >>> up = axis_operator(np.array([-0.25, 0.25, 0.75, 1.25]), 2, "linear")
    >>> chain_operators(down, up, 4).size
    4
    """
    return _band(_dense(second, first.size) @ _dense(first, n_in))


def _dense(operator: AxisOperator, n_in: int) -> np.ndarray:
    matrix = np.zeros((operator.size, n_in))
    rows = np.repeat(np.arange(operator.size), operator.index.shape[1])
    np.add.at(matrix, (rows, operator.index.ravel()), operator.weights.ravel())
    return matrix


def mirror_index(index: np.ndarray, n: int) -> np.ndarray:
    """Reflect integer indices into ``[0, n-1]`` without repeating the edge (``d c b | a b c d``)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def cubic_bspline_prefilter_matrix(n: int) -> np.ndarray:
    """The dense ``[n, n]`` matrix turning samples into cubic B-spline coefficients (mirror boundary)."""
    sampled = np.zeros((n, n))
    for offset, value in ((-1, 1 / 6), (0, 4 / 6), (1, 1 / 6)):
        rows = np.arange(n)
        np.add.at(sampled, (rows, mirror_index(rows + offset, n)), value)
    return np.linalg.inv(sampled)


def _interpolation_matrix(positions: np.ndarray, n_in: int, mode: str) -> np.ndarray:
    rows = np.arange(positions.size)
    matrix = np.zeros((positions.size, n_in))
    if mode == "nearest":
        matrix[rows, np.clip(nearest_index(positions), 0, n_in - 1)] = 1.0
    elif mode == "linear":
        clamped = np.clip(positions, 0, n_in - 1)
        low = np.clip(np.floor(clamped).astype(np.int64), 0, max(n_in - 2, 0))
        frac = clamped - low
        np.add.at(matrix, (rows, low), 1.0 - frac)
        np.add.at(matrix, (rows, np.minimum(low + 1, n_in - 1)), frac)
    elif mode == "cubic":
        low = np.floor(positions).astype(np.int64)
        frac = positions - low
        for tap, weight in enumerate(cubic_bspline_weights(frac)):
            np.add.at(matrix, (rows, mirror_index(low - 1 + tap, n_in)), weight)
        matrix = matrix @ cubic_bspline_prefilter_matrix(n_in)
    else:
        raise ValueError(f"mode must be 'nearest', 'linear' or 'cubic', got {mode!r}")
    return matrix


def cubic_bspline_weights(frac):
    """Weights of the four taps ``floor(x) - 1 .. floor(x) + 2`` of the cubic B-spline.

    ``frac = x - floor(x)`` may be a NumPy array or a tensor (only arithmetic is used).
    """
    one = 1.0 - frac
    return (
        one**3 / 6.0,
        (3.0 * frac**3 - 6.0 * frac**2 + 4.0) / 6.0,
        (-3.0 * frac**3 + 3.0 * frac**2 + 3.0 * frac + 1.0) / 6.0,
        frac**3 / 6.0,
    )


def _gaussian_matrix(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    matrix = np.zeros((n, n))
    rows = np.arange(n)
    for tap, value in zip(taps, kernel):
        np.add.at(matrix, (rows, np.clip(rows + tap, 0, n - 1)), value)
    return matrix


def _band(matrix: np.ndarray) -> AxisOperator:
    magnitude = np.abs(matrix)
    significant = magnitude > _SIGNIFICANT * magnitude.max(axis=1, keepdims=True).clip(min=1e-300)
    significant &= magnitude > 0
    taps = max(int(significant.sum(axis=1).max()), 1)
    order = np.argsort(~significant, axis=1, kind="stable")[:, :taps]
    weights = np.take_along_axis(np.where(significant, matrix, 0.0), order, axis=1)
    selection = taps == 1 and bool(np.all((weights == 0) | (weights == 1)))
    return AxisOperator(index=order.astype(np.int64), weights=weights, is_selection=selection)
