"""Spatial dictionary transforms: they change the voxel grid and update the affine."""

from .base import SpatialTransform
from .crop_pad import CropForeground, CropOrPad, PadToMultiple
from .flip import Flip, Rotate90
from .orientation import Orientation
from .register import ApplyTransform, RegisterToReference
from .resample import Resample, ResampleToReference, Resize

__all__ = [
    "ApplyTransform",
    "CropForeground",
    "CropOrPad",
    "Flip",
    "Orientation",
    "PadToMultiple",
    "RegisterToReference",
    "Resample",
    "ResampleToReference",
    "Resize",
    "Rotate90",
    "SpatialTransform",
]
