"""Dictionary transforms: the base contract, Compose, history replay/inversion and the families."""

from .base import REGISTRY, Transform, build_transform
from .compose import Compose
from .history import replay
from .invert import invert
from .io import LoadImage, SaveImage
from .spatial import (
    CropForeground,
    CropOrPad,
    Flip,
    Orientation,
    PadToMultiple,
    Resample,
    ResampleToReference,
    Resize,
    Rotate90,
    SpatialTransform,
)

__all__ = [
    "REGISTRY",
    "Compose",
    "CropForeground",
    "CropOrPad",
    "Flip",
    "LoadImage",
    "Orientation",
    "PadToMultiple",
    "Resample",
    "ResampleToReference",
    "Resize",
    "Rotate90",
    "SaveImage",
    "SpatialTransform",
    "Transform",
    "build_transform",
    "invert",
    "replay",
]
