"""The 3D U-Net (MONAI's ``UNet``) and its checkpoint files.

A checkpoint is one file written by ``torch.save`` and readable with
``torch.load(path, weights_only=True)`` (no pickled code, so loading a file cannot run it)::

    {"format": 1,
     "spec": {"task": ..., "architecture": {...}, "labels": {"0": "background", ...},
              "spacing_mm": 2.0, "intensity": {"percentiles": [0.5, 99.5]},
              "roi_size": [96, 96, 96], "gpuprep_version": ..., "training": {...}},
     "state_dict": {name: tensor}}

``architecture`` holds the arguments of ``monai.networks.nets.UNet``; the state dict may be
float16 (half the file size) and is cast to float32 on load. ``gpuprep/models/weights/README.md``
describes every field. MONAI is imported only when a network is built.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import ConfigError, GpuprepError
from ..io.atomic import atomic_path
from ..optional import require_monai

#: The checkpoint format this version reads and writes.
CHECKPOINT_FORMAT = 1
REQUIRED_ARCHITECTURE = ("spatial_dims", "in_channels", "out_channels", "channels", "strides")
OPTIONAL_ARCHITECTURE = ("num_res_units", "kernel_size", "up_kernel_size", "act", "norm", "dropout", "bias",
                         "adn_ordering")
REQUIRED_SPEC = ("task", "architecture", "labels", "spacing_mm", "intensity", "roi_size")


class CheckpointError(GpuprepError, ValueError):
    """A model checkpoint is missing, unreadable, of an unknown format or does not fit its network."""


def build_unet(architecture: Mapping[str, Any]) -> torch.nn.Module:
    """Build a MONAI ``UNet`` from the ``architecture`` dict of a checkpoint spec.

    Parameters
    ----------
    architecture:
        ``spatial_dims`` (3), ``in_channels``, ``out_channels``, ``channels`` (features per
        level, at least two), ``strides`` (one fewer than ``channels``), and optionally
        ``num_res_units`` and the other keyword arguments of ``monai.networks.nets.UNet``
        (``kernel_size``, ``up_kernel_size``, ``act``, ``norm``, ``dropout``, ``bias``,
        ``adn_ordering``).

    Example
    -------
    >>> net = build_unet({"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
    ...                   "channels": [4, 8], "strides": [2], "num_res_units": 1})
    >>> net(torch.zeros(1, 1, 8, 8, 8)).shape
    torch.Size([1, 2, 8, 8, 8])
    """
    arguments = check_architecture(architecture)
    return require_monai("the gpuprep U-Net", "monai.networks.nets").UNet(**arguments)


def check_architecture(architecture: Any) -> dict:
    """Validate a U-Net ``architecture`` dict and return a plain copy (see :func:`build_unet`).

    Example
    -------
    >>> check_architecture({"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
    ...                     "strides": [2]})["strides"]
    [2]
    """
    if not isinstance(architecture, Mapping):
        raise ConfigError(f"architecture must be a dict of UNet arguments, got {type(architecture).__name__}")
    missing = [k for k in REQUIRED_ARCHITECTURE if k not in architecture]
    unknown = sorted(set(architecture) - set(REQUIRED_ARCHITECTURE) - set(OPTIONAL_ARCHITECTURE))
    if missing or unknown:
        raise ConfigError(
            f"architecture: missing keys {missing} and unknown keys {unknown}; required "
            f"{list(REQUIRED_ARCHITECTURE)}, optional {list(OPTIONAL_ARCHITECTURE)}"
        )
    arguments = dict(architecture)
    if arguments["spatial_dims"] != 3 or isinstance(arguments["spatial_dims"], bool):
        raise ConfigError(f"architecture: spatial_dims must be 3, got {arguments['spatial_dims']!r}")
    for name in ("in_channels", "out_channels"):
        if not _positive_int(arguments[name]):
            raise ConfigError(f"architecture: {name} must be a positive int, got {arguments[name]!r}")
    for name in ("channels", "strides"):
        values = arguments[name]
        if not isinstance(values, (list, tuple)) or not values or not all(_positive_int(v) for v in values):
            raise ConfigError(f"architecture: {name} must be a non-empty list of positive ints, got {values!r}")
        arguments[name] = list(values)
    if len(arguments["channels"]) < 2 or len(arguments["strides"]) != len(arguments["channels"]) - 1:
        raise ConfigError(
            f"architecture: channels needs at least two levels and strides one entry fewer, got "
            f"channels={arguments['channels']!r}, strides={arguments['strides']!r}"
        )
    residual = arguments.get("num_res_units", 0)
    if isinstance(residual, bool) or not isinstance(residual, int) or residual < 0:
        raise ConfigError(f"architecture: num_res_units must be a non-negative int, got {residual!r}")
    return arguments


def check_spec(spec: Any, source: str = "spec") -> dict:
    """Validate a checkpoint spec (see the module docstring) and return a plain copy.

    ``source`` names the file in error messages.

    Example
    -------
    >>> arch = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2]}
    >>> check_spec({"task": "brain-mask", "architecture": arch, "labels": {"0": "background", "1": "brain"},
    ...             "spacing_mm": 2.0, "intensity": {"percentiles": [0.5, 99.5]}, "roi_size": [16, 16, 16]})["task"]
    'brain-mask'
    """
    if not isinstance(spec, Mapping):
        raise CheckpointError(f"{source}: spec must be a dict, got {type(spec).__name__}")
    missing = [k for k in REQUIRED_SPEC if k not in spec]
    if missing:
        raise CheckpointError(f"{source}: spec lacks the keys {missing} (required: {list(REQUIRED_SPEC)})")
    spec = dict(spec)
    try:
        architecture = check_architecture(spec["architecture"])
    except ConfigError as error:
        raise CheckpointError(f"{source}: {error}") from None
    if not isinstance(spec["task"], str) or not spec["task"]:
        raise CheckpointError(f"{source}: spec task must be a non-empty string, got {spec['task']!r}")
    labels = spec["labels"]
    expected = [str(i) for i in range(architecture["out_channels"])]
    if not isinstance(labels, Mapping) or sorted(labels, key=_int_or_inf) != expected or \
            not all(isinstance(v, str) for v in labels.values()):
        raise CheckpointError(
            f"{source}: spec labels must map each output channel '0'..'{expected[-1]}' to a name, got {labels!r}"
        )
    spacing = spec["spacing_mm"]
    if isinstance(spacing, bool) or not isinstance(spacing, numbers.Real) or not 0 < float(spacing) < math.inf:
        raise CheckpointError(f"{source}: spec spacing_mm must be a positive number (isotropic mm), got {spacing!r}")
    intensity = spec["intensity"]
    percentiles = _percentile_pair(intensity.get("percentiles") if isinstance(intensity, Mapping) else None)
    if percentiles is None:
        raise CheckpointError(
            f"{source}: spec intensity must be {{'percentiles': [low, high]}} with 0 <= low < high <= 100, "
            f"got {intensity!r}"
        )
    roi = spec["roi_size"]
    multiple = math.prod(architecture["strides"])
    if not isinstance(roi, (list, tuple)) or len(roi) != 3 or not all(_positive_int(r) and r % multiple == 0
                                                                       for r in roi):
        raise CheckpointError(
            f"{source}: spec roi_size must be three positive ints divisible by the product of the strides "
            f"({multiple}), got {roi!r}"
        )
    spec.update(architecture=architecture, labels=dict(labels), spacing_mm=float(spacing),
                intensity={**intensity, "percentiles": list(percentiles)}, roi_size=list(roi))
    return spec


def _percentile_pair(value: Any) -> tuple[float, float] | None:
    """``value`` as ``(low, high)`` floats if it is two numbers with ``0 <= low < high <= 100``, else None."""
    if not isinstance(value, (list, tuple)) or len(value) != 2 or \
            not all(isinstance(p, numbers.Real) and not isinstance(p, bool) for p in value):
        return None
    low, high = float(value[0]), float(value[1])
    return (low, high) if 0 <= low < high <= 100 else None


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, spec: Mapping[str, Any],
                    half: bool = True) -> Path:
    """Write ``model``'s weights and ``spec`` as a checkpoint file (atomically).

    Parameters
    ----------
    path:
        Output file (``.pt``); its folder must exist.
    model:
        The network built from ``spec["architecture"]`` (its state dict must fit it).
    spec:
        The checkpoint spec (module docstring); ``gpuprep_version`` is filled in when absent.
        It must hold only JSON types (it is loaded with ``weights_only=True``).
    half:
        Store floating-point tensors as float16 (half the size; the network is run in float32).

    Example
    -------
    >>> import tempfile, pathlib
    >>> arch = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2]}
    >>> spec = {"task": "brain-mask", "architecture": arch, "labels": {"0": "background", "1": "brain"},
    ...         "spacing_mm": 2.0, "intensity": {"percentiles": [0.5, 99.5]}, "roi_size": [16, 16, 16]}
    >>> path = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "m.pt", build_unet(arch), spec)
    >>> model, loaded = load_checkpoint(path)
    >>> loaded["task"], next(model.parameters()).dtype
    ('brain-mask', torch.float32)
    """
    path = Path(path)
    spec = check_spec(spec, str(path))
    spec.setdefault("gpuprep_version", __version__)
    reference = build_unet(spec["architecture"]).state_dict()
    state = model.state_dict()
    if set(state) != set(reference) or any(state[k].shape != reference[k].shape for k in reference):
        raise CheckpointError(f"{path}: the model's weights do not fit spec architecture {spec['architecture']}")
    tensors = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        tensors[name] = (tensor.half() if half and tensor.is_floating_point() else tensor).clone()
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "spec": spec, "state_dict": tensors}, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Read a checkpoint file into a float32 network (on the CPU, eval mode) and its spec.

    The network also gets ``spec``, ``weights_sha256`` (of the file) and ``weights_file``
    attributes. Errors name the file: missing, not a checkpoint, unknown format, or weights
    that do not fit the architecture.

    Example
    -------
    See :func:`save_checkpoint`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model checkpoint not found: {path}")
    raw = path.read_bytes()
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises many types for foreign or corrupt files
        raise CheckpointError(f"{path}: not a gpuprep model checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(checkpoint, Mapping) or not {"format", "spec", "state_dict"} <= set(checkpoint):
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: not a gpuprep model checkpoint: expected a dict with format, spec and "
                              f"state_dict, got {keys}")
    if checkpoint["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {checkpoint['format']!r} is not supported "
                              f"(this gpuprep reads format {CHECKPOINT_FORMAT})")
    spec = check_spec(checkpoint["spec"], str(path))
    model = build_unet(spec["architecture"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in dict(checkpoint["state_dict"]).items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(
            f"{path}: the weights do not fit the architecture {spec['architecture']} ({first})"
        ) from None
    model.eval()
    # Plain attributes beside the module's tensors (torch's stubs type module attributes as Tensor | Module).
    vars(model).update(spec=spec, weights_sha256=hashlib.sha256(raw).hexdigest(), weights_file=path.name)
    return model, spec


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a network's weights (names, dtypes, shapes and values), for models not read from a file.

    Example
    -------
    >>> len(state_digest(torch.nn.Linear(2, 2)))
    64
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu", torch.float32 if tensor.is_floating_point() else tensor.dtype)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _int_or_inf(text: str) -> float:
    return int(text) if isinstance(text, str) and text.isdigit() else math.inf
