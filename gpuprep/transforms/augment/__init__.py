"""Random augmentation: per-sample parameters, batched, fused with the spatial steps around them."""

from .artifacts import RandGhosting, RandGibbs, RandSpike
from .choice import OneOf, SomeOf
from .degrade import RandAnisotropy
from .elastic import RandElastic
from .intensity import RandBiasField, RandBlur, RandBrightness, RandContrast, RandGamma
from .motion import RandMotion
from .noise import RandNoise
from .spatial import RandAffine, RandFlip, RandRotate90
from .swap import RandSwap
from .synth import RandLabelsToImage

__all__ = [
    "OneOf",
    "RandAffine",
    "RandAnisotropy",
    "RandBiasField",
    "RandBlur",
    "RandBrightness",
    "RandContrast",
    "RandElastic",
    "RandFlip",
    "RandGamma",
    "RandGhosting",
    "RandGibbs",
    "RandLabelsToImage",
    "RandMotion",
    "RandNoise",
    "RandRotate90",
    "RandSpike",
    "RandSwap",
    "SomeOf",
]
