"""Exact axis reordering and flipping of voxel grids (no interpolation).

An *orientation transform* follows nibabel's convention: an array ``ornt`` of shape ``[3, 2]``
whose row ``i`` says that input spatial axis ``i`` becomes output axis ``ornt[i, 0]`` and is
flipped when ``ornt[i, 1] == -1``. The matrix arithmetic is nibabel's own
(:mod:`nibabel.orientations`); this module applies it to batched tensors ``[B, C, D, H, W]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from nibabel import orientations as nio


def axcodes_of(affine: torch.Tensor | np.ndarray) -> str:
    """Return the axis codes of a voxel-to-world affine, e.g. ``"RAS"`` or ``"LPS"``.

    Example
    -------
    >>> axcodes_of(np.diag([-1.0, -1.0, 1.0, 1.0]))
    'LPS'
    """
    return "".join(nio.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def orientation_transform(affine: torch.Tensor | np.ndarray, axcodes: str) -> np.ndarray:
    """Return the ``[3, 2]`` orientation transform that takes a grid with ``affine`` to ``axcodes``."""
    source = nio.io_orientation(np.asarray(affine, dtype=np.float64))
    return nio.ornt_transform(source, nio.axcodes2ornt(tuple(axcodes)))


def reoriented_shape(spatial_shape: Sequence[int], ornt: np.ndarray) -> tuple[int, ...]:
    """Return the spatial shape after applying ``ornt``."""
    order = np.argsort(np.asarray(ornt)[:, 0])
    return tuple(int(spatial_shape[i]) for i in order)


def apply_orientation(volume: torch.Tensor, ornt: np.ndarray) -> torch.Tensor:
    """Flip and permute the last three axes of ``volume`` as ``ornt`` says (a view where possible).

    Matches :func:`nibabel.orientations.apply_orientation` on the spatial axes.

    Example
    -------
    >>> x = torch.arange(8).reshape(1, 1, 2, 2, 2)
    >>> apply_orientation(x, np.array([[0, -1], [1, 1], [2, 1]]))[0, 0, 0, 0].tolist()
    [4, 5]
    """
    ornt = np.asarray(ornt)
    lead = volume.ndim - 3
    flips = [lead + axis for axis, flip in enumerate(ornt[:, 1]) if flip == -1]
    if flips:
        volume = torch.flip(volume, dims=flips)
    order = [int(i) for i in np.argsort(ornt[:, 0])]
    return volume.permute(*range(lead), *(lead + i for i in order))
