"""Intensity transforms: rescaling, clipping, CT windows, z-scores, histogram standardisation.

They change voxel values only (never the grid), work per sample on the data's device and leave
integer keys (label maps, masks) alone.
"""

from .ct_window import CT_WINDOWS, CTWindow
from .histogram_standardize import HistogramStandardize
from .landmarks import load_landmarks, save_landmarks
from .normalize import ZNormalize
from .rescale import Clip, RescaleIntensity, ScaleIntensityRange

__all__ = [
    "CT_WINDOWS",
    "CTWindow",
    "Clip",
    "HistogramStandardize",
    "RescaleIntensity",
    "ScaleIntensityRange",
    "ZNormalize",
    "load_landmarks",
    "save_landmarks",
]
