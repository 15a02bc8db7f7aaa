"""Where the output voxels of a chain of spatial steps read their input: voxel maps and a warp field.

:func:`composed_maps` multiplies a chain's voxel maps into one map per sample, and
:class:`ChainGeometry` adds the field of a warping step (one per chain) between the maps
before and after it. :mod:`gpuprep.transforms.fusion` resamples each key through it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import TransformError
from ..functional.grid import is_lattice_map
from ..functional.resample import resample, resample_with_labels
from ..functional.resample_general import GridCache, antialias
from ..functional.warp import warp, warp_image_and_labels
from ..records import warp_entry
from .warp_fields import FIELD_BUILDERS, SEPARABLE_BUILDERS

__all__ = ["ChainGeometry", "composed_maps"]


def composed_maps(chain: Sequence[Sequence[Mapping]], size: int) -> np.ndarray:
    """Per sample, the product of a chain's voxel maps ``[size, 4, 4]`` (the identity for an empty chain).

    The first step's map is on the left: an output voxel goes through the last step's map first.

    Example
    -------
    >>> scale = {"voxel_map": np.diag([2.0, 2.0, 2.0, 1.0]).tolist()}
    >>> composed_maps([[scale], [scale]], 1)[0].diagonal().tolist()
    [4.0, 4.0, 4.0, 1.0]
    """
    maps = []
    for index in range(size):
        product = np.eye(4)
        for steps in reversed(chain):  # right to left, as numpy.linalg.multi_dot orders square matrices
            product = np.dot(np.asarray(steps[index]["voxel_map"], dtype=np.float64), product)
        maps.append(product)
    return np.stack(maps)


@dataclass(frozen=True, eq=False)
class ChainGeometry:
    """Where each output voxel of a chain samples its input: voxel maps, and a warp field between them.

    Without a warping step the chain is one map per sample (``before``). With one, an output
    voxel goes through ``after`` (the steps after the warp), the field, then ``before`` (the steps
    up to and including the warp's own map). The field is built when first needed: the dense
    :attr:`field` for the torch path, or its separable :attr:`rows` for the numba warp kernel.
    """

    before: np.ndarray
    after: np.ndarray | None = None
    field_key: tuple | None = None
    cache: GridCache | None = None
    build_field: Callable[[], torch.Tensor] | None = None
    build_rows: Callable[[], tuple | None] | None = None

    @classmethod
    def of(cls, chain: Sequence[Sequence[Mapping]], device: torch.device,
           cache: GridCache | None = None) -> ChainGeometry:
        """The geometry of a chain (per position, the per-sample steps); its field is built on ``device``.

        ``cache`` keeps the field and the sampling grids for the next key moved by the same chain.
        """
        size = len(chain[0])
        warped = [position for position, steps in enumerate(chain) if any(warp_entry(s) for s in steps)]
        if len(warped) > 1:
            raise TransformError("one resampling can apply one elastic step: Compose splits its runs so, and "
                                 "gp.invert cannot yet undo a history with two elastic steps for one key")
        if not warped:
            return cls(before=composed_maps(chain, size), cache=cache)
        position = warped[0]
        before, after = composed_maps(chain[: position + 1], size), composed_maps(chain[position + 1:], size)
        steps = chain[position]
        entry = next(e for e in map(warp_entry, steps) if e is not None)
        field_key = ("field", before.tobytes(), after.tobytes(), repr([s.get(entry) for s in steps]),
                     repr([s.get("inverse") for s in steps]), str(device))
        rows = SEPARABLE_BUILDERS.get(entry)
        return cls(before=before, after=after, field_key=field_key, cache=cache,
                   build_field=functools.partial(FIELD_BUILDERS[entry], steps, device),
                   build_rows=None if rows is None else functools.partial(rows, steps, device))

    @property
    def warped(self) -> bool:
        """Whether the chain has a warping step (a displacement field between ``before`` and ``after``)."""
        return self.field_key is not None

    @functools.cached_property
    def field(self) -> torch.Tensor | None:
        """The warp's dense displacement field ``[B, 3, D, H, W]`` (voxels), None without a warp."""
        if self.build_field is None:
            return None
        if self.cache is None or self.field_key is None:
            return self.build_field()
        return self.cache.get(self.field_key, self.build_field)

    @functools.cached_property
    def rows(self) -> tuple | None:
        """The warp's field separably, ``(rows, first, taps)`` for the numba kernel, or None."""
        if self.build_rows is None:
            return None
        if self.cache is None:
            return self.build_rows()
        return self.cache.get(("rows", *(self.field_key or ())), self.build_rows)

    @property
    def maps(self) -> np.ndarray:
        """The voxel maps of the whole chain with the field left out ``[B, 4, 4]``."""
        return self.before if self.after is None else self.before @ self.after

    @property
    def lattice(self) -> bool:
        """Whether every output voxel centre falls on an input voxel centre (no interpolation needed)."""
        return not self.warped and all(is_lattice_map(m) for m in self.maps)

    def sample(self, volume: torch.Tensor, out_shape: Sequence[int], *, mode: str, padding_mode: str,
               fill: float | torch.Tensor = 0.0, anti_aliasing: bool = False) -> torch.Tensor:
        """Sample ``volume`` ``[B, C, D, H, W]`` at the chain's points; ``fill`` outside under ``"zeros"``."""
        if not self.warped or self.after is None:
            return resample(volume, self.maps, out_shape, mode, anti_aliasing, padding_mode, fill, cache=self.cache)
        if anti_aliasing:
            volume = antialias(volume, self.maps)
        if isinstance(fill, torch.Tensor) or fill != 0.0:  # a constant c outside: warp(x - c) + c
            return self.sample(volume - fill, out_shape, mode=mode, padding_mode=padding_mode) + fill
        if volume.is_floating_point() == (mode == "linear"):  # an image interpolated, or labels copied
            image, labels = (volume, None) if volume.is_floating_point() else (None, volume)
            warped = self._warp_in_kernel(image, labels, out_shape, padding_mode)
            if warped is not None:
                return warped[0] if image is not None else warped[1]
        field = self.field
        assert field is not None  # warped
        return warp(volume, self.before, field, self.after, out_shape, mode, padding_mode,
                    cache=self.cache, field_key=self.field_key)

    def sample_with_labels(self, image: torch.Tensor, labels: torch.Tensor, out_shape: Sequence[int], *,
                           padding_mode: str, onehot: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
        """An image (linear) and its labels (nearest, or ``onehot``) sampled in one pass, padded with 0; or None.

        The results are :meth:`sample`'s for each (see
        :func:`~gpuprep.functional.resample.resample_with_labels` and, with a warp,
        :func:`~gpuprep.functional.warp.warp_image_and_labels`).
        """
        if not self.warped or self.after is None:
            return resample_with_labels(image, labels, self.maps, out_shape, padding_mode, onehot)
        return self._warp_in_kernel(image, labels, out_shape, padding_mode, onehot)

    def _warp_in_kernel(self, image, labels, out_shape, padding_mode, onehot=False) -> tuple | None:
        """The numba warp kernel's ``(image, labels)``, or None where it does not apply (``warp_image_and_labels``)."""
        given = image if image is not None else labels
        if given is None or given.device.type != "cpu" or self.build_rows is None or self.after is None:
            return None
        separable = self.rows
        if separable is None:
            return None
        rows, first, taps = separable
        return warp_image_and_labels(image, labels, self.before, rows, first, taps, self.after, out_shape,
                                     padding_mode, onehot)
