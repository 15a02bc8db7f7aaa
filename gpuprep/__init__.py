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

from . import data, errors, io, models, random, transforms
from ._version import __version__
from .data import (
    CacheDataset,
    Dataset,
    DeviceLoader,
    GridPatches,
    PatchAggregator,
    RandPatches,
    collate_patches,
    collate_skip_none,
    from_monai,
    from_torchio,
    pad_collate,
    predict_sample,
    records_from_bids,
    records_from_csv,
    records_from_folder,
    sliding_window_inference,
    to_monai,
    to_torchio,
    unpad,
)
from .functional.orientation import axcodes_of
from .io import read_image, read_sidecar, sidecar_path, write_image
from .models import SegmentBrain, SkullStrip
from .sample import (
    collate,
    decollate,
    get_affine,
    get_history,
    get_kind,
    get_meta,
    is_label,
    make_meta,
    make_sample,
    set_kind,
)
from .transforms import *  # noqa: F403

__all__ = [
    *transforms.__all__,
    "CacheDataset",
    "Dataset",
    "DeviceLoader",
    "GridPatches",
    "PatchAggregator",
    "RandPatches",
    "SegmentBrain",
    "SkullStrip",
    "__version__",
    "axcodes_of",
    "collate",
    "collate_patches",
    "collate_skip_none",
    "data",
    "decollate",
    "errors",
    "get_affine",
    "get_history",
    "get_kind",
    "get_meta",
    "is_label",
    "io",
    "make_meta",
    "make_sample",
    "models",
    "pad_collate",
    "predict_sample",
    "random",
    "records_from_bids",
    "records_from_csv",
    "records_from_folder",
    "read_image",
    "read_sidecar",
    "set_kind",
    "sidecar_path",
    "sliding_window_inference",
    "unpad",
    "write_image",
    "from_monai",
    "to_monai",
    "from_torchio",
    "to_torchio",
]
