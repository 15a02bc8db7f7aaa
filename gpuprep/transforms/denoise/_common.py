"""Helpers shared by the denoising transforms: argument checks and voxel spacing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError, short_repr
from ...sample import get_meta


def voxel_spacing(batch: dict, key: str) -> np.ndarray:
    """Voxel spacing in mm of every sample of ``batch[key]``: the affine's column norms, ``[B, 3]``.

    Reads only the metadata (a CPU float64 tensor), never the image.
    """
    affine = torch.as_tensor(get_meta(batch, key)["affine"], dtype=torch.float64)
    if affine.ndim == 2:
        affine = affine.unsqueeze(0)
    return torch.linalg.vector_norm(affine[:, :3, :3], dim=1).numpy()


def check_real(
    owner: str,
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
) -> float:
    """A finite real number within bounds (``strict``: the minimum is excluded)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = float(value) > minimum if strict else float(value) >= minimum
    if ok and maximum is not None:
        ok = float(value) <= maximum
    if not ok:
        rule = "a finite number"
        if minimum is not None:
            rule += f" {'>' if strict else '>='} {minimum:g}"
        if maximum is not None:
            rule += f"{' and' if minimum is not None else ''} <= {maximum:g}"
        raise ConfigError(f"{owner}: {name} must be {rule}, got {short_repr(value)}")
    return float(value)


def check_choice(owner: str, name: str, value: Any, choices: Sequence[Any]) -> Any:
    """One of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{owner}: {name} must be one of {list(choices)}, got {short_repr(value)}")
    return value


def check_per_axis(owner: str, name: str, value: Any, *, minimum: float, integer: bool = False) -> list:
    """One value or three (one per spatial axis D, H, W), each at least ``minimum``."""
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if len(values) == 1:
        values = values * 3
    kind = "integer" if integer else "finite number"
    valid = len(values) == 3 and all(
        (isinstance(v, (int, np.integer)) if integer else isinstance(v, (int, float, np.integer, np.floating)))
        and not isinstance(v, bool)
        and math.isfinite(float(v))
        and v >= minimum
        for v in values
    )
    if not valid:
        raise ConfigError(
            f"{owner}: {name} must be one {kind} >= {minimum:g} or three of them (D, H, W), got {short_repr(value)}"
        )
    return [int(v) for v in values] if integer else [float(v) for v in values]
