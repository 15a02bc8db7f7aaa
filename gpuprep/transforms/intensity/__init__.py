"""Intensity transforms: rescaling, clipping, CT windows, z-scores, histogram standardisation,
N4 bias-field correction.

They change voxel values only (never the grid), work per sample on the data's device and leave
integer keys (label maps, masks) alone.
"""

from .bias_correction import BiasFieldCorrection
from .ct_window import CT_WINDOWS, CTWindow
from .histogram_standardize import HistogramStandardize
from .landmarks import load_landmarks, save_landmarks
from .normalize import ZNormalize
from .rescale import Clip, RescaleIntensity, ScaleIntensityRange

__all__ = [
    "CT_WINDOWS",
    "BiasFieldCorrection",
    "CTWindow",
    "Clip",
    "HistogramStandardize",
    "RescaleIntensity",
    "ScaleIntensityRange",
    "ZNormalize",
    "load_landmarks",
    "save_landmarks",
]
