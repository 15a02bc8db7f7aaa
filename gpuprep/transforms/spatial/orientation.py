"""Reorient images to standard axis codes by exact axis permutation and flipping."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nibabel import orientations as nio

from ...errors import ConfigError
from ...functional.orientation import orientation_transform, reoriented_shape
from .base import SpatialTransform

_AXIS_PAIRS = ({"L", "R"}, {"P", "A"}, {"I", "S"})


class Orientation(SpatialTransform):
    """Reorder and flip the voxel axes so that they point along ``axcodes`` (no interpolation).

    The data are permuted/flipped exactly and the affine is updated so that every voxel keeps
    its world position; the result agrees with :func:`nibabel.as_closest_canonical` for
    ``axcodes="RAS"``. Samples of a batch with different orientations are each handled
    correctly (they must end with the same shape to stay in one batch).

    Parameters
    ----------
    keys:
        Image keys to reorient.
    axcodes:
        Three letters, one of L/R, one of P/A and one of I/S, e.g. ``"RAS"`` or ``"LPS"``: the
        direction in which each voxel axis increases.
    allow_missing_keys:
        Skip keys that are absent instead of raising.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.zeros(1, 4, 5, 6)}, affine=torch.diag(torch.tensor([-1., 1, 1, 1])))
    >>> gp.axcodes_of(gp.get_affine(gp.Orientation("image", "RAS")(s), "image"))
    'RAS'
    """

    padding_mode = None  # a permutation and flips never look outside the input

    def __init__(self, keys: str | Sequence[str], axcodes: str = "RAS", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        codes = axcodes.upper() if isinstance(axcodes, str) else axcodes
        if not isinstance(codes, str) or len(codes) != 3 or not all(
            len(set(codes) & pair) == 1 for pair in _AXIS_PAIRS
        ):
            raise ConfigError(
                f"Orientation: axcodes must be three letters with one of L/R, P/A and I/S "
                f"(e.g. 'RAS'), got {axcodes!r}"
            )
        self.axcodes = codes

    def grid_step(self, key: str, shape: tuple[int, ...], affine: np.ndarray):
        ornt = orientation_transform(affine, self.axcodes)
        # nibabel's inv_ornt_aff is exactly the output-voxel -> input-voxel map.
        return reoriented_shape(shape, ornt), nio.inv_ornt_aff(ornt, shape)
