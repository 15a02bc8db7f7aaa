"""Random augmentation: per-sample parameters, batched, fused with the spatial steps around them."""

from .choice import OneOf, SomeOf
from .degrade import RandAnisotropy
from .intensity import RandBiasField, RandBlur, RandBrightness, RandContrast, RandGamma
from .noise import RandNoise
from .spatial import RandAffine, RandFlip, RandRotate90
from .swap import RandSwap

__all__ = [
    "OneOf",
    "RandAffine",
    "RandAnisotropy",
    "RandBiasField",
    "RandBlur",
    "RandBrightness",
    "RandContrast",
    "RandFlip",
    "RandGamma",
    "RandNoise",
    "RandRotate90",
    "RandSwap",
    "SomeOf",
]
