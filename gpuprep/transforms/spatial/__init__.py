"""Spatial dictionary transforms: they change the voxel grid and update the affine."""

from .orientation import Orientation

__all__ = ["Orientation"]
