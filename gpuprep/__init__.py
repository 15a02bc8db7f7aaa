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

from . import data, errors, io
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
    Clip,
    ForegroundMask,
    HistogramStandardize,
    MaskImage,
    RescaleIntensity,
    ScaleIntensityRange,
    ZNormalize,
    Compose,
    CropForeground,
    CropOrPad,
    Flip,
    LoadImage,
    Orientation,
    PadToMultiple,
    Resample,
    ResampleToReference,
    Resize,
    Rotate90,
    SaveImage,
    Transform,
    invert,
    replay,
)

__all__ = [
    "Clip",
    "Compose",
    "CropForeground",
    "CropOrPad",
    "Flip",
    "ForegroundMask",
    "HistogramStandardize",
    "LoadImage",
    "MaskImage",
    "Orientation",
    "PadToMultiple",
    "REGISTRY",
    "Resample",
    "ResampleToReference",
    "RescaleIntensity",
    "Resize",
    "Rotate90",
    "SaveImage",
    "ScaleIntensityRange",
    "Transform",
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
    "read_image",
    "read_sidecar",
    "replay",
    "sidecar_path",
    "write_image",
]
