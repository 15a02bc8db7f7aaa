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

from . import data, errors, io, random, transforms
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
from .transforms import *  # noqa: F403

__all__ = [
    *transforms.__all__,
    "__version__",
    "axcodes_of",
    "collate",
    "data",
    "decollate",
    "errors",
    "get_affine",
    "get_history",
    "get_meta",
    "io",
    "make_meta",
    "make_sample",
    "random",
    "read_image",
    "read_sidecar",
    "sidecar_path",
    "write_image",
]
