"""Datasets, caches, the device loader, patches, sliding-window inference and the bundled sample data."""

from ..errors import DatasetError
from ..sample import collate, decollate
from .cache import CacheDataset, split_random
from .dataset import Dataset, collate_skip_none
from .grid_patches import GridPatches, PatchAggregator
from .labels import PHANTOM_LABELS, TISSUE_LABELS
from .loader import DeviceLoader
from .monai_adapter import from_monai, to_monai
from .pad_collate import pad_collate, unpad
from .patches import RandPatches, collate_patches
from .phantom import phantom
from .records import records_from_bids, records_from_csv, records_from_folder
from .sample_data import sample_brain, sample_brain_paths
from .sliding_window import predict_sample, sliding_window_inference
from .torchio_adapter import from_torchio, to_torchio

__all__ = [
    "PHANTOM_LABELS",
    "TISSUE_LABELS",
    "CacheDataset",
    "Dataset",
    "DatasetError",
    "DeviceLoader",
    "GridPatches",
    "PatchAggregator",
    "RandPatches",
    "collate",
    "collate_patches",
    "collate_skip_none",
    "decollate",
    "from_monai",
    "from_torchio",
    "pad_collate",
    "phantom",
    "predict_sample",
    "records_from_bids",
    "records_from_csv",
    "records_from_folder",
    "sample_brain",
    "sample_brain_paths",
    "sliding_window_inference",
    "split_random",
    "to_monai",
    "to_torchio",
    "unpad",
]
