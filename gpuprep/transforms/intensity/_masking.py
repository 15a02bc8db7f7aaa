"""Shared argument checks and mask look-up for intensity and mask transforms."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

import torch

from ...errors import ConfigError, MissingKeyError, TransformError, short_repr

NONZERO = "nonzero"


def check_mask_argument(owner: str, mask: Any, name: str = "mask") -> str | None:
    """Validate a ``mask`` argument: None, ``"nonzero"`` or the key of a mask in the sample."""
    if mask is None or (isinstance(mask, str) and mask):
        return mask
    raise ConfigError(
        f"{owner}: {name} must be None (whole image), 'nonzero' or the key of a mask in the sample, "
        f"got {short_repr(mask)}"
    )


@overload
def check_number(owner: str, name: str, value: Any, *, allow_none: Literal[False] = False) -> float: ...
@overload
def check_number(owner: str, name: str, value: Any, *, allow_none: bool) -> float | None: ...
def check_number(owner: str, name: str, value: Any, *, allow_none: bool = False) -> float | None:
    """Validate a finite real number (not a bool); None passes when ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        rule = "a finite number or None" if allow_none else "a finite number"
        raise ConfigError(f"{owner}: {name} must be {rule}, got {short_repr(value)}")
    return float(value)


def check_pair(owner: str, name: str, value: Any, *, increasing: bool = False) -> tuple[float, float]:
    """Validate a pair of finite numbers (optionally strictly increasing)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"{owner}: {name} must be a pair of numbers (low, high), got {short_repr(value)}")
    low = check_number(owner, f"{name}[0]", value[0])
    high = check_number(owner, f"{name}[1]", value[1])
    if increasing and not low < high:
        raise ConfigError(f"{owner}: {name} must satisfy low < high, got {tuple(value)!r}")
    return low, high


def mask_tensor(owner: str, batch: Mapping, key: str, mask_key: str, x: torch.Tensor) -> torch.Tensor:
    """The boolean mask ``[B, 1 or C, D, H, W]`` under ``mask_key`` (nonzero = inside), checked for ``x``."""
    if mask_key not in batch:
        raise MissingKeyError(
            f"{owner}: mask key {mask_key!r} (used for {key!r}) not found in the sample; "
            f"it has {sorted(str(k) for k in batch)}"
        )
    mask = batch[mask_key]
    if not isinstance(mask, torch.Tensor) or mask.ndim != x.ndim:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TransformError(f"{owner}: mask {mask_key!r} must be a tensor shaped like {key!r}, got {shape}")
    same_space = mask.shape[-3:] == x.shape[-3:] and mask.shape[0] == x.shape[0]
    if not same_space or mask.shape[1] not in (1, x.shape[1]):
        raise TransformError(
            f"{owner}: mask {mask_key!r} has shape {tuple(mask.shape)}, which does not fit image {key!r} "
            f"of shape {tuple(x.shape)} (need the same batch and spatial size, "
            f"and 1 or {x.shape[1]} channels)"
        )
    return mask.to(x.device) != 0


def resolve_mask(owner: str, batch: Mapping, key: str, mask: str | None) -> torch.Tensor | None:
    """The statistics mask for image ``key``: None (all voxels), ``x != 0``, or a mask key's voxels."""
    x = batch[key]
    if mask is None:
        return None
    if mask == NONZERO:  # always the rule, even if the sample has a key named "nonzero"
        return x != 0
    return mask_tensor(owner, batch, key, mask, x)
