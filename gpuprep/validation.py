"""Argument checks shared by every layer: booleans, integers, probabilities, seeds, modes, axes.

A bottom-layer module (it imports only :mod:`gpuprep.errors`, the standard library and NumPy),
so functional code, readers, transforms and datasets validate their arguments the same way and
with the same words. Each check raises :class:`~gpuprep.errors.ConfigError` with a message
naming the owner (the class or function being configured), the argument, the rule and the bad
value, and returns the value (converted where the docstring says so) when it is valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ConfigError, short_repr

__all__ = [
    "MODES",
    "check_bool",
    "check_int",
    "check_int_or_three",
    "check_non_negative",
    "check_positive",
    "check_probability",
    "check_seed",
    "spatial_axes",
    "validate_mode",
]

#: Interpolation modes of intensity images (label maps use nearest neighbour or one-hot).
MODES = ("nearest", "linear", "cubic")


def check_bool(owner: str, name: str, value: Any) -> bool:
    """Check that ``value`` is ``True`` or ``False`` (not merely truthy) and return it.

    Parameters
    ----------
    owner:
        The class or function being configured, named in the error.
    name:
        The argument's name.
    value:
        The value given.

    Example
    -------
    >>> check_bool("Normalize", "clip", True)
    True
    >>> check_bool("Normalize", "clip", 1)
    Traceback (most recent call last):
    ...
    gpuprep.errors.ConfigError: Normalize: clip must be True or False, got 1
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}: {name} must be True or False, got {short_repr(value)}")
    return value


def check_int(owner: str, name: str, value: Any, *, minimum: int) -> int:
    """Check that ``value`` is an integer (Python or NumPy, not a bool) of at least ``minimum``.

    Parameters
    ----------
    owner, name, value:
        As in :func:`check_bool`.
    minimum:
        The smallest value allowed.

    Returns
    -------
    int
        ``value`` as a Python ``int``.

    Example
    -------
    >>> check_int("RandMotion", "num_transforms", 2, minimum=1)
    2
    >>> check_int("RandMotion", "num_transforms", 0, minimum=1)
    Traceback (most recent call last):
    ...
    gpuprep.errors.ConfigError: RandMotion: num_transforms must be an integer >= 1, got 0
    """
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{owner}: {name} must be an integer >= {minimum}, got {short_repr(value)}")
    return int(value)


def check_int_or_three(owner: str, name: str, value: Any, *, minimum: int) -> tuple[int, int, int]:
    """Check one integer or three (one per spatial axis D, H, W), each at least ``minimum`` (0 or 1).

    Parameters
    ----------
    owner, name, value:
        As in :func:`check_bool`.
    minimum:
        1 for positive sizes, 0 for non-negative margins.

    Returns
    -------
    tuple of three ints
        One value is repeated for the three axes.

    Example
    -------
    >>> check_int_or_three("RandPatches", "size", 8, minimum=1)
    (8, 8, 8)
    >>> check_int_or_three("CropForeground", "margin", (1, -1, 0), minimum=0)
    Traceback (most recent call last):
    ...
    gpuprep.errors.ConfigError: CropForeground: margin must be a non-negative int or three of them, got (1, -1, 0)
    """
    values = (value,) * 3 if isinstance(value, int) else tuple(value) if isinstance(value, Sequence) else ()
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values):
        rule = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
        raise ConfigError(f"{owner}: {name} must be {rule} or three of them, got {short_repr(value)}")
    return values


def check_probability(owner: str, name: str, value: Any) -> float:
    """Check that ``value`` is a number in ``[0, 1]`` (not a bool) and return it as a float.

    Parameters
    ----------
    owner, name, value:
        As in :func:`check_bool`.

    Example
    -------
    >>> check_probability("RandFlip", "p", 1)
    1.0
    >>> check_probability("RandFlip", "p", 1.5)
    Traceback (most recent call last):
    ...
    gpuprep.errors.ConfigError: RandFlip: p must be a probability in [0, 1], got 1.5
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{owner}: {name} must be a probability in [0, 1], got {short_repr(value)}")
    return float(value)


def check_positive(owner: str, name: str, value: Any) -> float:
    """Check that ``value`` is a finite number above 0 (not a bool) and return it as a float.

    Parameters
    ----------
    owner, name, value:
        As in :func:`check_bool`.

    Example
    -------
    >>> check_positive("register", "control_spacing", 12)
    12.0
    >>> check_positive("register", "control_spacing", 0)
    Traceback (most recent call last):
    ...
    gpuprep.errors.ConfigError: register: control_spacing must be a finite number > 0, got 0
    """
    return _finite_number(owner, name, value, zero_allowed=False)


def check_non_negative(owner: str, name: str, value: Any) -> float:
    """Check that ``value`` is a finite number of at least 0 (not a bool) and return it as a float.

    Parameters
    ----------
    owner, name, value:
        As in :func:`check_bool`.

    Example
    -------
    >>> check_non_negative("register", "bending_weight", 0)
    0.0
    >>> check_non_negative("register", "bending_weight", -1.5)
    Traceback (most recent call last):
    ...
    gpuprep.errors.ConfigError: register: bending_weight must be a finite number >= 0, got -1.5
    """
    return _finite_number(owner, name, value, zero_allowed=True)


def _finite_number(owner: str, name: str, value: Any, zero_allowed: bool) -> float:
    """``value`` as a float if it is a finite number (not a bool) above 0, or at least 0 with ``zero_allowed``."""
    bound = ">=" if zero_allowed else ">"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not (value >= 0.0 if zero_allowed else value > 0.0) or not value < float("inf"):
        raise ConfigError(f"{owner}: {name} must be a finite number {bound} 0, got {short_repr(value)}")
    return float(value)


def check_seed(owner: str, seed: Any) -> int | None:
    """Check a ``seed`` argument: None or a non-negative integer (not a bool); return it.

    Parameters
    ----------
    owner:
        The class or function being configured, named in the error.
    seed:
        The value given.

    Example
    -------
    >>> check_seed("RandFlip", 7)
    7
    >>> check_seed("RandFlip", -1)
    Traceback (most recent call last):
    ...
    gpuprep.errors.ConfigError: RandFlip: seed must be a non-negative integer or None, got -1
    """
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ConfigError(f"{owner}: seed must be a non-negative integer or None, got {short_repr(seed)}")
    return seed


def validate_mode(mode: Any, owner: str) -> str:
    """Check an interpolation ``mode`` argument: one of :data:`MODES`; return it.

    Parameters
    ----------
    mode:
        The value given.
    owner:
        The class or function being configured, named in the error.

    Example
    -------
    >>> validate_mode("cubic", "Resample")
    'cubic'
    >>> validate_mode("onehot", "Resample")
    Traceback (most recent call last):
    ...
    gpuprep.errors.ConfigError: Resample: mode must be one of ('nearest', 'linear', 'cubic'), got 'onehot'
    """
    if mode not in MODES:
        raise ConfigError(f"{owner}: mode must be one of {MODES}, got {short_repr(mode)}")
    return mode


def spatial_axes(axes: int | Sequence[int], owner: str) -> tuple[int, ...]:
    """Check a spatial axis (0, 1, 2 = D, H, W) or a non-empty sequence of them; return a tuple.

    Parameters
    ----------
    axes:
        One axis or a sequence of axes.
    owner:
        The class or function being configured, named in the error.

    Example
    -------
    >>> spatial_axes(1, "Flip")
    (1,)
    >>> spatial_axes([0, 2], "Flip")
    (0, 2)
    """
    values = (axes,) if isinstance(axes, int) else tuple(axes) if isinstance(axes, Sequence) else ()
    if not values or any(isinstance(a, bool) or a not in (0, 1, 2) for a in values):
        raise ConfigError(f"{owner}: axes must be spatial axes among 0, 1, 2, got {short_repr(axes)}")
    return values
