"""Small homogeneous-matrix helpers for world-space affine augmentation (NumPy, float64)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rotation_matrix(degrees: Sequence[float]) -> np.ndarray:
    """``R = Rz @ Ry @ Rx`` for rotations (in degrees) about the world x, y and z axes, as 3x3.

    Example
    -------
    >>> np.round(rotation_matrix([0, 0, 90]) @ [1, 0, 0], 6).tolist()
    [0.0, 1.0, 0.0]
    """
    ax, ay, az = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def shear_matrix(shear: Sequence[float]) -> np.ndarray:
    """Upper-triangular shear ``[[1, sxy, sxz], [0, 1, syz], [0, 0, 1]]`` as 3x3."""
    sxy, sxz, syz = (float(s) for s in shear)
    return np.array([[1.0, sxy, sxz], [0.0, 1.0, syz], [0.0, 0.0, 1.0]])


def world_transform(linear: np.ndarray, center: np.ndarray, translation: Sequence[float] | np.ndarray) -> np.ndarray:
    """4x4 map ``x -> linear @ (x - center) + center + translation`` (world mm to world mm)."""
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = np.asarray(center) + np.asarray(translation) - linear @ np.asarray(center)
    return matrix


def grid_center(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """World position (mm) of the centre of a grid."""
    return (np.asarray(affine) @ np.append((np.asarray(shape, dtype=np.float64) - 1) / 2.0, 1.0))[:3]
