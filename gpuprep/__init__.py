"""gpuprep: fast, correct 3D medical-image preprocessing and augmentation on GPU or CPU.

Example
-------
>>> import gpuprep as gp
>>> sample = gp.data.phantom(shape=(32, 32, 32), seed=0)
>>> pipeline = gp.Compose([gp.Orientation(["image", "label"], "RAS")])
>>> out = pipeline(sample)
>>> out["image"].shape
torch.Size([1, 32, 32, 32])
"""

from . import data, errors, io, random
from ._version import __version__
from .functional.orientation import axcodes_of
from .io import read_image, read_sidecar, sidecar_path, write_image
from .sample import (
    collate,
    decollate,
    get_affine,
    get_history,
    get_meta,
    make_meta,
    make_sample,
)
from .transforms import (
    REGISTRY,
    AnisotropicDiffusion,
    Clip,
    Compose,
    CropForeground,
    CropOrPad,
    Flip,
    ForegroundMask,
    GaussianDenoise,
    HistogramStandardize,
    LoadImage,
    MaskImage,
    MedianDenoise,
    NonLocalMeans,
    OneOf,
    Orientation,
    PadToMultiple,
    RandAffine,
    RandFlip,
    RandRotate90,
    Resample,
    ResampleToReference,
    RescaleIntensity,
    Resize,
    Rotate90,
    SaveImage,
    ScaleIntensityRange,
    SomeOf,
    Transform,
    WaveletDenoise,
    ZNormalize,
    invert,
    replay,
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
    "RandFlip",
    "RandRotate90",
    "Resample",
    "ResampleToReference",
    "RescaleIntensity",
    "Resize",
    "Rotate90",
    "SaveImage",
    "ScaleIntensityRange",
    "SomeOf",
    "Transform",
    "WaveletDenoise",
    "ZNormalize",
    "__version__",
    "axcodes_of",
    "collate",
    "data",
    "decollate",
    "errors",
    "get_affine",
    "get_history",
    "get_meta",
    "invert",
    "io",
    "make_meta",
    "make_sample",
    "random",
    "read_image",
    "read_sidecar",
    "replay",
    "sidecar_path",
    "write_image",
]
