"""Extending volumes beyond their border with ``scipy.ndimage``'s boundary modes.

scipy's ``'reflect'`` is the *half-sample* symmetric extension ``d c b a | a b c d | d c b a``
(NumPy's ``'symmetric'``), which is **not** torch's ``'reflect'``; scipy's ``'mirror'`` is the
whole-sample one ``d c b | a b c d | c b a`` (torch's ``'reflect'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: Boundary modes understood by the filters, with ``scipy.ndimage`` meaning.
BOUNDARY_MODES = ("reflect", "mirror", "nearest", "wrap", "constant")


def boundary_indices(size: int, before: int, after: int, mode: str, device: Any = None) -> torch.Tensor:
    """Source index of every position of an axis of length ``size`` extended by ``before``/``after``.

    Works for any extension width (also wider than the axis, where scipy repeats the pattern).

    Example
    -------
    >>> boundary_indices(4, 3, 3, "reflect").tolist()
    [2, 1, 0, 0, 1, 2, 3, 3, 2, 1]
    >>> boundary_indices(4, 3, 3, "mirror").tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    _check_mode(mode, allow_constant=False)
    index = torch.arange(-before, size + after, device=device)
    if mode == "nearest":
        return index.clamp(0, size - 1)
    if mode == "wrap":
        return index.remainder(size)
    if mode == "reflect":
        period = 2 * size
        index = index.remainder(period)
        return torch.where(index >= size, period - 1 - index, index)
    # mirror
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * size - 2
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def pad_volume(
    x: torch.Tensor, pads: Sequence[tuple[int, int]], mode: str = "reflect", cval: float = 0.0
) -> torch.Tensor:
    """Extend the last ``len(pads)`` axes of ``x`` by ``(before, after)`` voxels with a scipy mode.

    Parameters
    ----------
    x:
        Tensor whose trailing axes are padded (``[B, C, D, H, W]`` with three pads).
    pads:
        One ``(before, after)`` pair per trailing axis, in axis order.
    mode:
        One of :data:`BOUNDARY_MODES` (``'reflect'`` is half-sample symmetric, as in scipy).
    cval:
        Fill value for ``mode='constant'``.

    Example
    -------
    >>> pad_volume(torch.tensor([[1., 2, 3]]), [(2, 1)], "reflect").tolist()
    [[2.0, 1.0, 1.0, 2.0, 3.0, 3.0]]
    """
    _check_mode(mode)
    pads = [(int(b), int(a)) for b, a in pads]
    if mode == "constant":
        flat: list[int] = []
        for before, after in reversed(pads):
            flat += [before, after]
        return torch.nn.functional.pad(x, flat, value=float(cval))
    out = x
    for offset, (before, after) in enumerate(pads):
        if before == 0 and after == 0:
            continue
        dim = x.ndim - len(pads) + offset
        size = out.shape[dim]
        index = boundary_indices(size, before, after, mode, device=x.device)
        # Gather only the few border planes and concatenate: one copy of the volume, where an
        # index_select of the whole padded axis is many times slower on the CPU for inner axes.
        parts = [out.index_select(dim, index[:before]), out, out.index_select(dim, index[before + size :])]
        out = torch.cat([part for part in parts if part.shape[dim]], dim)
    return out




def _check_mode(mode: str, allow_constant: bool = True) -> None:
    allowed = BOUNDARY_MODES if allow_constant else tuple(m for m in BOUNDARY_MODES if m != "constant")
    if mode not in allowed:
        raise ValueError(f"boundary mode must be one of {allowed}, got {mode!r}")


def fill_tensor(volume: torch.Tensor, value: float | torch.Tensor) -> torch.Tensor | None:
    """The constant a sampler writes outside ``volume`` ``[B, C, D, H, W]``, as ``[B, C, 1, 1, 1]``.

    Parameters
    ----------
    volume:
        The batch being sampled; the result has its device and dtype.
    value:
        A number, or one value per sample and channel (``[B, C]`` or ``[B, C, 1, 1, 1]``).

    Returns None for the number 0 (samplers then pad with zeros without a tensor).

    Example
    -------
    >>> fill_tensor(torch.zeros(2, 1, 3, 3, 3), -1.0).flatten().tolist()
    [-1.0, -1.0]
    >>> fill_tensor(torch.zeros(2, 1, 3, 3, 3), 0.0) is None
    True
    """
    if not isinstance(value, torch.Tensor):
        if float(value) == 0.0:
            return None
        value = torch.tensor(float(value))
    value = value.to(device=volume.device, dtype=volume.dtype)
    if value.ndim == 2:  # [B, C]
        value = value[..., None, None, None]
    elif value.ndim < 5:  # one number
        value = value.reshape(1, 1, 1, 1, 1)
    return value.expand(volume.shape[0], volume.shape[1], 1, 1, 1)


def check_point_sampling(volume: torch.Tensor, mode: str, padding_mode: str) -> None:
    """Check the arguments every point sampler of general maps shares (numba, Triton, torch).

    Parameters
    ----------
    volume:
        The batch to sample: floating point for ``mode="linear"``, any dtype for ``"nearest"``.
    mode:
        ``"linear"`` or ``"nearest"``.
    padding_mode:
        ``"zeros"`` (a constant beyond half a voxel outside the input) or ``"border"``.

    Example
    -------
    >>> check_point_sampling(torch.zeros(1, 1, 2, 2, 2, dtype=torch.uint8), "linear", "zeros")
    Traceback (most recent call last):
    ...
    TypeError: torch.uint8 volumes (labels) can only be resampled with mode='nearest'
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
    if not volume.is_floating_point() and mode != "nearest":
        raise TypeError(f"{volume.dtype} volumes (labels) can only be resampled with mode='nearest'")
