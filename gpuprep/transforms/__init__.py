"""Dictionary transforms: the base contract, Compose, history replay/inversion and the families."""

from .augment import (
    OneOf,
    RandAffine,
    RandAnisotropy,
    RandBiasField,
    RandBlur,
    RandBrightness,
    RandContrast,
    RandFlip,
    RandGamma,
    RandGhosting,
    RandGibbs,
    RandNoise,
    RandRotate90,
    RandSpike,
    RandSwap,
    SomeOf,
)
from .base import REGISTRY, Transform, build_transform
from .compose import Compose
from .denoise import AnisotropicDiffusion, GaussianDenoise, MedianDenoise, NonLocalMeans, WaveletDenoise
from .history import replay
from .intensity import Clip, HistogramStandardize, RescaleIntensity, ScaleIntensityRange, ZNormalize
from .invert import invert
from .io import LoadImage, SaveImage
from .mask import ForegroundMask, MaskImage
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
    "AnisotropicDiffusion",
    "Clip",
    "Compose",
    "CropForeground",
    "CropOrPad",
    "Flip",
    "ForegroundMask",
    "GaussianDenoise",
    "HistogramStandardize",
    "LoadImage",
    "MaskImage",
    "MedianDenoise",
    "NonLocalMeans",
    "OneOf",
    "Orientation",
    "PadToMultiple",
    "RandAffine",
    "RandAnisotropy",
    "RandBiasField",
    "RandBlur",
    "RandBrightness",
    "RandContrast",
    "RandFlip",
    "RandGamma",
    "RandGhosting",
    "RandGibbs",
    "RandNoise",
    "RandRotate90",
    "RandSpike",
    "RandSwap",
    "Resample",
    "ResampleToReference",
    "RescaleIntensity",
    "Resize",
    "Rotate90",
    "SaveImage",
    "ScaleIntensityRange",
    "SomeOf",
    "SpatialTransform",
    "Transform",
    "WaveletDenoise",
    "ZNormalize",
    "build_transform",
    "invert",
    "replay",
]
