"""Random augmentation: per-sample parameters, batched, fused with the spatial steps around them."""

from .choice import OneOf, SomeOf
from .spatial import RandAffine, RandFlip, RandRotate90

__all__ = ["OneOf", "RandAffine", "RandFlip", "RandRotate90", "SomeOf"]
