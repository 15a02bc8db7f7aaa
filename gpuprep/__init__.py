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

import importlib as _importlib

from . import lazy_api as _lazy_api
from ._version import __version__ as __version__

# The API is loaded on first use (PEP 562): ``import gpuprep`` alone imports no torch, so the
# ``gpuprep`` command answers ``--help`` at once. The first ``gp.<name>`` (or ``dir(gp)``,
# ``from gpuprep import *``) imports every module below, as an eager import would.
_API = {
    ".data": ["CacheDataset", "Dataset", "DeviceLoader", "GridPatches", "PatchAggregator", "RandPatches",
              "collate_patches", "collate_skip_none", "from_monai", "from_torchio", "pad_collate",
              "predict_sample", "records_from_bids", "records_from_csv", "records_from_folder",
              "sliding_window_inference", "to_monai", "to_torchio", "unpad"],
    ".functional.orientation": ["axcodes_of"],
    ".io": ["read_image", "read_sidecar", "sidecar_path", "write_image"],
    ".models": ["SegmentBrain", "SkullStrip"],
    ".registration": ["RegistrationResult", "register"],
    ".sample": ["collate", "decollate", "get_affine", "get_history", "get_kind", "get_meta", "is_label",
                "make_meta", "make_sample", "set_kind"],
}
_SUBPACKAGES = ("data", "errors", "io", "models", "random", "registration", "transforms")


def _load() -> None:
    """Import the whole API into this module's namespace (once)."""
    namespace = globals()
    for name in _SUBPACKAGES:
        namespace[name] = _importlib.import_module(f".{name}", __name__)
    for module_name, names in _API.items():
        module = _importlib.import_module(module_name, __name__)
        namespace.update({name: getattr(module, name) for name in names})
    transforms = namespace["transforms"]
    namespace.update({name: getattr(transforms, name) for name in transforms.__all__})
    namespace["__all__"] = [*transforms.__all__, *_ALL]


def _load_once() -> None:
    """:func:`_load` unless it ran: what the lower layers call, through :mod:`gpuprep.lazy_api`, on a registry miss."""
    if "__all__" not in globals():
        _load()


_lazy_api.on_load_api(_load_once)


def __getattr__(name: str):
    if name.startswith("__") and name != "__all__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _load()
    try:
        return globals()[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    _load()
    return sorted(globals())


_ALL = [
    "CacheDataset",
    "Dataset",
    "DeviceLoader",
    "GridPatches",
    "PatchAggregator",
    "RandPatches",
    "RegistrationResult",
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
    "register",
    "registration",
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
