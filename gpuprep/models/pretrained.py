"""Pretrained segmentation networks shipped inside the package (never downloaded).

Two tasks, one checkpoint file each in ``gpuprep/models/weights/`` (format: see
:mod:`gpuprep.models.unet` and ``weights/README.md``):

- ``"brain-tissue"``: a skull-stripped T1-like brain -> 0 background, 1 CSF, 2 GM, 3 WM;
- ``"brain-mask"``: a whole head -> 0 background, 1 brain.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ConfigError
from .unet import CheckpointError, load_checkpoint

TASKS = ("brain-tissue", "brain-mask")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class WeightsNotBundledError(CheckpointError):
    """The checkpoint of a task is not part of this build of gpuprep."""


def weights_path(task: str) -> Path:
    """The path of the shipped checkpoint of ``task`` (which may be absent from a build).

    Example
    -------
    >>> weights_path("brain-mask").name
    'brain-mask.pt'
    """
    if task not in TASKS:
        raise ConfigError(f"weights_path: task must be one of {list(TASKS)}, got {task!r}")
    return WEIGHTS_DIR / f"{task}.pt"


def resolve_device(device: str | torch.device, owner: str = "load_pretrained") -> torch.device:
    """Turn ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a device into a device.

    Example
    -------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{owner}: device must be 'auto', 'cpu', 'cuda' or a torch.device, got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{owner}: device {device!r} was asked for, but PyTorch sees no CUDA device here")
    if resolved.type == "cuda" and resolved.index is None:  # so that it compares equal to a tensor's device
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def load_pretrained(task_or_path: str | os.PathLike, device: str | torch.device = "auto") -> torch.nn.Module:
    """Load a segmentation network: a shipped task by name, or any checkpoint file by path.

    Parameters
    ----------
    task_or_path:
        ``"brain-tissue"``, ``"brain-mask"`` (the weights shipped with gpuprep), or the path
        of a checkpoint file (e.g. one you trained).
    device:
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or a ``torch.device``.

    Returns
    -------
    torch.nn.Module
        The network in eval mode on ``device``, float32, with ``model.spec`` (the checkpoint
        spec: task, labels, spacing, intensity, window size), ``model.weights_sha256`` and
        ``model.weights_file``.

    Raises
    ------
    WeightsNotBundledError
        A task whose weights are not part of this build.
    CheckpointError
        A missing or invalid checkpoint file (the message names it).

    Example
    -------
    >>> load_pretrained("no-such-file.pt", device="cpu")
    Traceback (most recent call last):
    ...
    gpuprep.models.unet.CheckpointError: model checkpoint not found: no-such-file.pt
    """
    target = resolve_device(device)
    if isinstance(task_or_path, str) and task_or_path in TASKS:
        path = weights_path(task_or_path)
        if not path.is_file():
            raise WeightsNotBundledError(
                f"the pretrained {task_or_path!r} weights are not bundled in this build of gpuprep "
                f"(expected {path}); pass the path of a checkpoint file instead"
            )
    elif isinstance(task_or_path, (str, os.PathLike)):
        path = Path(task_or_path)
    else:
        raise ConfigError(
            f"load_pretrained: task_or_path must be one of {list(TASKS)} or a checkpoint path, got {task_or_path!r}"
        )
    model, _ = load_checkpoint(path)
    return model.to(target)
