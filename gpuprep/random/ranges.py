"""Validation of random parameter ranges (``0.1`` -> ``(-0.1, 0.1)``, ``(a, b)`` -> ``(a, b)``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import ConfigError, short_repr


def symmetric_range(value, name: str, owner: str, axes: int = 3, center: float = 0.0) -> list[tuple[float, float]]:
    """Per-axis ``(low, high)`` ranges from a number ``d`` (``center ± d``), a pair, or one of either per axis.

    Example
    -------
    >>> symmetric_range(10, "rotate", "RandAffine")
    [(-10.0, 10.0), (-10.0, 10.0), (-10.0, 10.0)]
    >>> symmetric_range((0.9, 1.1), "scale", "RandAffine", center=1.0)
    [(0.9, 1.1), (0.9, 1.1), (0.9, 1.1)]
    """
    items = list(value) if _is_sequence(value) and len(value) == axes and any(
        _is_sequence(v) for v in value) else [value] * axes
    ranges = []
    for item in items:
        if _is_number(item):
            if item < 0:
                raise ConfigError(f"{owner}: {name} must be >= 0 (a half-width), got {short_repr(value)}")
            ranges.append((center - float(item), center + float(item)))
        elif _is_sequence(item) and len(item) == 2 and all(_is_number(v) for v in item) and item[0] <= item[1]:
            ranges.append((float(item[0]), float(item[1])))
        else:
            raise ConfigError(
                f"{owner}: {name} must be a number d (range {center}±d), a pair (low, high) with low <= high, "
                f"or one of those per axis; got {short_repr(value)}"
            )
    return ranges


def uniform_range(value, name: str, owner: str, minimum: float | None = None) -> tuple[float, float]:
    """One ``(low, high)`` range from a number ``x`` (meaning ``(0, x)``) or a pair, checked against ``minimum``."""
    pair = (0.0, value) if _is_number(value) else value
    if not (_is_sequence(pair) and len(pair) == 2 and all(_is_number(v) for v in pair) and pair[0] <= pair[1]):
        raise ConfigError(
            f"{owner}: {name} must be a number or a pair (low, high) with low <= high, got {short_repr(value)}"
        )
    if minimum is not None and pair[0] < minimum:
        raise ConfigError(f"{owner}: {name} must not go below {minimum}, got {short_repr(value)}")
    return float(pair[0]), float(pair[1])


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_sequence(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)
