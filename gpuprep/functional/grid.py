"""The one coordinate convention of gpuprep: voxel indices, world millimetres, sampling maps.

- A **voxel coordinate** ``(i, j, k)`` indexes the spatial axes ``(D, H, W)`` of a tensor; the
  centre of the first voxel is ``(0, 0, 0)`` and of the last ``(D-1, H-1, W-1)``.
- The **affine** ``A`` (float64, 4x4) maps homogeneous voxel coordinates to world RAS+ mm:
  ``world = A @ [i, j, k, 1]``.
- A **voxel map** ``M`` (4x4) maps *output* voxel coordinates to *input* voxel coordinates:
  ``input = M @ [i_out, j_out, k_out, 1]``. Resampling reads the input at ``M @ out`` for every
  output voxel (a pull, as in ``scipy.ndimage.affine_transform`` and ``grid_sample``). When the
  world position is kept, ``M = inv(A_in) @ A_out``. Maps compose by matrix product: applying
  map ``M1`` then ``M2`` reads the source at ``M1 @ M2 @ out``.
- PyTorch's ``grid_sample`` uses normalised coordinates in ``[-1, 1]`` in reversed axis order
  ``(W, H, D)``; :func:`normalized_theta` converts a voxel map into that convention.

All matrices here are small CPU NumPy float64 arrays: metadata, never volume data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each voxel axis: the norms of the affine's first three columns.

    Example
    -------
    >>> spacing_of(np.diag([2.0, -3.0, 1.5, 1.0])).tolist()
    [2.0, 3.0, 1.5]
    """
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def corner_distance(affine_a, affine_b, shape: Sequence[int]) -> np.ndarray:
    """The largest distance (mm) between where two affines put the 8 corners of a grid of ``shape``.

    ``affine_a`` and ``affine_b`` are ``[4, 4]`` or ``[B, 4, 4]``; the result has one distance per
    sample (``[B]``, or ``[1]`` for single affines). Two grids of the same shape agree when it is small.

    Example
    -------
    >>> shifted = np.eye(4); shifted[0, 3] = 0.5
    >>> corner_distance(np.eye(4), shifted, (4, 4, 4)).tolist()
    [0.5]
    """
    a = np.asarray(affine_a, dtype=np.float64).reshape(-1, 4, 4)
    b = np.asarray(affine_b, dtype=np.float64).reshape(-1, 4, 4)
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)]).T  # [4, 8]
    return np.linalg.norm((a - b)[:, :3] @ corners, axis=1).max(axis=1)


def world_preserving_map(affine_in: np.ndarray, affine_out: np.ndarray) -> np.ndarray:
    """The voxel map that reads an input grid at the world points of an output grid."""
    return np.linalg.solve(np.asarray(affine_in, dtype=np.float64), np.asarray(affine_out, dtype=np.float64))


def scaling_map(in_shape: Sequence[float] | np.ndarray, out_shape: Sequence[float] | np.ndarray) -> np.ndarray:
    """Voxel map of a centre-aligned rescaling of a grid from ``in_shape`` to ``out_shape``.

    Voxel *edges* of the two grids coincide at both ends of each axis (the convention of
    ``skimage.transform.resize``, ``scipy.ndimage.zoom(grid_mode=True)`` and
    ``torch.nn.functional.interpolate(align_corners=False)``): output voxel ``j`` reads the
    input at ``(j + 0.5) * n_in / n_out - 0.5``. The map depends only on the ratio
    ``n_in / n_out``, so two spacings (``out_spacing, in_spacing``) give the map between grids
    of the same extent.
    """
    ratio = np.asarray(in_shape, dtype=np.float64) / np.asarray(out_shape, dtype=np.float64)
    voxel_map = np.diag([*ratio, 1.0])
    voxel_map[:3, 3] = 0.5 * ratio - 0.5
    return voxel_map


def translation_map(offset: Sequence[float]) -> np.ndarray:
    """Voxel map that reads the input at ``out + offset`` (a crop for positive offsets, a pad for negative)."""
    voxel_map = np.eye(4)
    voxel_map[:3, 3] = np.asarray(offset, dtype=np.float64)
    return voxel_map


def flip_map(shape: Sequence[int], axes: Sequence[int]) -> np.ndarray:
    """Voxel map that mirrors the given spatial axes of a grid of ``shape``."""
    voxel_map = np.eye(4)
    for axis in axes:
        voxel_map[axis, axis] = -1.0
        voxel_map[axis, 3] = shape[axis] - 1
    return voxel_map


def axis_permutation(voxel_map: np.ndarray, tol: float = 1e-9) -> list[int] | None:
    """If every output axis reads exactly one input axis, return that input axis per output axis.

    Such maps (permutations, flips, scalings, crops and pads) can be resampled one axis at a
    time. Returns None for maps that mix axes (rotations, shears).

    Example
    -------
    >>> axis_permutation(np.array([[0, 2, 0, 0], [1, 0, 0, 0], [0, 0, -1, 5], [0, 0, 0, 1.0]]))
    [1, 0, 2]
    """
    linear = np.asarray(voxel_map, dtype=np.float64)[:3, :3]
    nonzero = np.abs(linear) > tol * max(1.0, float(np.abs(linear).max()))
    if not (nonzero.sum(axis=0) == 1).all() or not (nonzero.sum(axis=1) == 1).all():
        return None
    return [int(np.flatnonzero(nonzero[:, out_axis])[0]) for out_axis in range(3)]


def is_lattice_map(voxel_map: np.ndarray, tol: float = 1e-6) -> bool:
    """Whether the map sends voxel centres to voxel centres (signed permutation, integer shift).

    Such maps need no interpolation: they are exact crops, pads, flips and axis permutations.
    """
    voxel_map = np.asarray(voxel_map, dtype=np.float64)
    if axis_permutation(voxel_map) is None:
        return False
    linear_ok = np.allclose(np.abs(voxel_map[:3, :3]).sum(axis=0), 1.0, atol=tol)
    return bool(linear_ok and np.allclose(voxel_map[:3, 3], np.round(voxel_map[:3, 3]), atol=tol))


def normalized_theta(voxel_map: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """Convert a voxel map into the ``[3, 4]`` matrix ``affine_grid`` expects (``align_corners=True``).

    ``grid_sample`` indexes normalised coordinates in reversed axis order ``(W, H, D)``; this
    wraps the voxel map between those conventions.
    """
    to_norm_in = _voxel_to_normalized(in_shape)
    from_norm_out = np.linalg.inv(_voxel_to_normalized(out_shape))
    theta = to_norm_in @ np.asarray(voxel_map, dtype=np.float64) @ from_norm_out
    reverse = np.eye(4)[[2, 1, 0, 3]]
    return (reverse @ theta @ reverse)[:3]


def _voxel_to_normalized(shape: Sequence[int]) -> np.ndarray:
    scale = [2.0 / max(int(n) - 1, 1) for n in shape]
    matrix = np.diag([*scale, 1.0])
    matrix[:3, 3] = -1.0
    return matrix


def rot90_map(shape: Sequence[int], axes: tuple[int, int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Voxel map and output shape of one quarter turn, as ``numpy.rot90(x, 1, axes)``.

    Example
    -------
    >>> voxel_map, shape = rot90_map((2, 3, 4), (0, 1))
    >>> shape
    (3, 2, 4)
    """
    first, second = axes
    voxel_map = np.eye(4)
    voxel_map[first, first] = voxel_map[second, second] = 0.0
    voxel_map[first, second] = 1.0  # input axis `first` = output axis `second`
    voxel_map[second, first] = -1.0  # input axis `second` runs backwards along output axis `first`
    voxel_map[second, 3] = shape[second] - 1
    out_shape = list(shape)
    out_shape[first], out_shape[second] = shape[second], shape[first]
    return voxel_map, tuple(int(s) for s in out_shape)
