"""Mask transforms: foreground (background-removal) masks and masking images with them."""

from .foreground import ForegroundMask, MaskImage

__all__ = ["ForegroundMask", "MaskImage"]
