"""Padding of spatial transforms: the argument checks, the value an image is padded with, and fusion runs.

Labels always pad with 0; an intensity image pads with its transform's ``padding_value`` (a number
or ``"minimum"``) where ``padding_mode="zeros"``, or repeats its edge with ``"border"``. One
resampling pads with one constant, so :func:`fusable_runs` splits a chain of spatial steps where
their padding values differ: fused and unfused then agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...errors import ConfigError, short_repr

if TYPE_CHECKING:
    from .base import SpatialTransform


def validate_padding_mode(padding_mode: str, owner: str) -> str:
    """Check a padding mode argument: ``"zeros"`` or ``"border"``."""
    if padding_mode not in ("zeros", "border"):
        raise ConfigError(f"{owner}: padding_mode must be 'zeros' or 'border', got {short_repr(padding_mode)}")
    return padding_mode


def validate_padding_value(value, owner: str) -> float | str:
    """Check a ``padding_value`` argument: a finite number or ``"minimum"``; return it (numbers as float).

    Example
    -------
    >>> validate_padding_value(-1000, "CropOrPad"), validate_padding_value("minimum", "CropOrPad")
    (-1000.0, 'minimum')
    """
    if value == "minimum":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ConfigError(f"{owner}: padding_value must be a finite number or 'minimum', got {value!r:.80}")
    return float(value)


def padding_fill(volume: torch.Tensor, padding_value: float | str) -> float | torch.Tensor:
    """The constant to pad ``volume`` ``[B, C, D, H, W]`` with: the number, or ``[B, C, 1, 1, 1]`` minima.

    The minima stay on the volume's device (no host synchronisation).
    """
    if padding_value == "minimum":
        return volume.amin(dim=(2, 3, 4), keepdim=True)
    return float(padding_value)


def padding_wish(transform: SpatialTransform) -> str | float | None:
    """What a transform wants outside its input: None (never looks there), ``"border"``, or its value."""
    if transform.padding_mode is None:
        return None
    return "border" if transform.padding_mode == "border" else transform.padding_value


def fusable_runs(transforms: Sequence[SpatialTransform]) -> list[list[SpatialTransform]]:
    """Split consecutive spatial transforms where two of them ask for different padding values.

    One resampling can pad with one constant, so a chain whose steps pad with, say, 0 and -1000
    is resampled in two runs; within a run fused and unfused results agree.

    Example
    -------
    >>> import gpuprep as gp
    >>> runs = fusable_runs([gp.CropOrPad("ct", (4, 4, 4)), gp.Flip("ct", 0),
    ...                      gp.CropOrPad("ct", (6, 6, 6), padding_value=-1000)])
    >>> [len(run) for run in runs]
    [2, 1]
    """
    runs: list[list[SpatialTransform]] = []
    value = None
    for transform in transforms:
        wish = padding_wish(transform)
        constant = wish not in (None, "border")
        if runs and (not constant or value is None or wish == value):
            runs[-1].append(transform)
        else:
            runs.append([transform])
        if constant:
            value = wish
    return runs
