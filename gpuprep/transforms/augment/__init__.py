"""Random augmentation: per-sample parameters, batched, fused with the spatial steps around them."""

from .spatial import RandAffine, RandFlip, RandRotate90

__all__ = ["RandAffine", "RandFlip", "RandRotate90"]
