"""N4 bias-field estimation (Tustison et al. 2010) in torch: batched, on CUDA or CPU.

The algorithm is ITK's ``N4BiasFieldCorrectionImageFilter``, step for step:

1. Work on the log image, inside a mask, on a grid shrunk by subsampling (ITK's ``ShrinkImageFilter``).
2. At each fitting level, iterate: sharpen the histogram of the current corrected log image
   (:func:`~gpuprep.functional.histogram_sharpen.sharpen_log_intensities`); fit a cubic B-spline
   lattice to the residual (corrected minus sharpened) with one level of the B-spline
   approximation (:func:`~gpuprep.functional.bspline_fit.fit_lattice`); add it to the field.
   Stop when the coefficient of variation of ``exp(old field - new field)`` inside the mask falls
   to ``convergence_threshold``, or after the level's iteration budget.
3. The next level doubles the mesh resolution (ITK refines the lattice exactly; here each level
   keeps its own lattice and the field is their sum, which is the same spline).
4. The field is evaluated at full resolution from the lattices, at each voxel's position on the
   shrunk grid.

Host synchronisation: one per iteration, to read which samples have converged (ITK's stopping
rule). Everything else stays on the data's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .bspline_fit import bspline_basis_at, evaluate_lattice, evaluate_lattices, fit_lattice, grid_bases, lattice_weights
from .histogram_sharpen import sharpen_log_intensities

__all__ = ["N4Result", "N4Settings", "n4_bias_field", "shrink_starts"]


@dataclass(frozen=True)
class N4Settings:
    """N4's parameters, with ITK's defaults (``SimpleITK.N4BiasFieldCorrectionImageFilter``).

    ``iterations`` is one budget per level (or one for all); ``control_points`` the number of
    control points per axis at the first level (4 = one mesh cell, ITK's default).
    """

    shrink: int = 4
    levels: int = 4
    iterations: int | tuple[int, ...] = 50
    control_points: tuple[int, int, int] = (4, 4, 4)
    convergence_threshold: float = 0.001
    bins: int = 200
    fwhm: float = 0.15
    wiener_noise: float = 0.01

    def budget(self, level: int) -> int:
        """The iteration budget of ``level``."""
        return self.iterations if isinstance(self.iterations, int) else self.iterations[level]


@dataclass
class N4Result:
    """What :func:`n4_bias_field` returns.

    ``log_field`` ``[B, D, H, W]`` on the input grid (the image divided by ``exp(log_field)`` is
    corrected); ``iterations`` ``[B, levels]`` run per level; ``convergence`` ``[B, levels]``, the
    last convergence measure of each level (NaN where the mask is empty).
    """

    log_field: torch.Tensor
    iterations: torch.Tensor
    convergence: torch.Tensor


def shrink_starts(shape: Sequence[int], shrink: int) -> tuple[list[int], list[int]]:
    """First voxel and size per axis of the grid shrunk by ``shrink``, centred as ITK's ``ShrinkImageFilter``.

    Example
    -------
    >>> shrink_starts((197, 233, 189), 4)
    ([2, 2, 2], [49, 58, 47])
    """
    sizes = [max(size // shrink, 1) for size in shape]
    starts = [math.floor((size - 1 - (small - 1) * shrink) / 2 + 0.5) for size, small in zip(shape, sizes)]
    return starts, sizes


def n4_bias_field(image: torch.Tensor, mask: torch.Tensor, settings: N4Settings = N4Settings()) -> N4Result:
    """Estimate the bias field of every sample of ``image`` ``[B, D, H, W]`` inside ``mask``.

    Voxels that are not positive are left out of the mask (their log is undefined). A sample
    with an empty mask gets a zero field.

    Example
    -------
    >>> g = torch.linspace(-1, 1, 32)
    >>> tissue = 1.0 + (torch.arange(32) % 8 < 4).float().expand(32, 32, 32)        # two tissues
    >>> bias = torch.exp(0.3 * g[:, None, None] + 0.2 * g[None, :, None] ** 2)      # a smooth field
    >>> x = (100 * tissue * bias)[None]
    >>> result = n4_bias_field(x, torch.ones_like(x, dtype=torch.bool), N4Settings(shrink=2, levels=3))
    >>> left = (x / result.log_field.exp() / tissue).log().std() / bias.log().std()
    >>> bool(left < 0.1)    # less than a tenth of the field's spread is left
    True
    """
    starts, sizes = shrink_starts(image.shape[1:], settings.shrink)
    view = tuple(slice(start, start + size * settings.shrink, settings.shrink) for start, size in zip(starts, sizes))
    small = image[(slice(None), *view)].to(torch.float32)
    inside = mask[(slice(None), *view)].bool() & (small > 0)
    log_image = torch.where(inside, small.clamp(min=torch.finfo(torch.float32).tiny).log(), 0.0)
    lattices, iterations, convergence = _fit_levels(log_image, inside, settings)
    bases = [_full_bases(image.shape[1:], starts, sizes, settings.shrink, lattice) for lattice in lattices]
    return N4Result(evaluate_lattices(lattices, bases), iterations, convergence)


def _fit_levels(log_image: torch.Tensor, inside: torch.Tensor, settings: N4Settings):
    """The loop over levels and iterations on the shrunk grid: the lattice of every level.

    The histogram work runs on the masked voxels only (``MaskedVoxels``); the B-spline fit and
    evaluation run on the grid.
    """
    batch, device = log_image.shape[0], log_image.device
    voxels = MaskedVoxels(inside)
    log_values = voxels.take(log_image)
    field = torch.zeros_like(log_values)  # the log field at the masked voxels
    weights = inside.to(torch.float32)
    lattices = []
    iterations = torch.zeros(batch, settings.levels, dtype=torch.int64)
    convergence = torch.full((batch, settings.levels), math.nan, dtype=torch.float64)
    for level in range(settings.levels):
        counts = [(points - 3) * 2**level + 3 for points in settings.control_points]
        bases = grid_bases(log_image.shape[1:], counts, device=device)
        omega = lattice_weights(weights, bases)
        lattice = torch.zeros(batch, *counts, dtype=torch.float32, device=device)
        active = torch.ones(batch, dtype=torch.bool)
        for _ in range(settings.budget(level)):
            corrected = log_values - field
            sharpened = sharpen_log_intensities(corrected, voxels.valid, settings.bins, settings.fwhm,
                                                settings.wiener_noise)
            residual = voxels.put(corrected - sharpened, log_image.shape)
            update = fit_lattice(residual, weights, bases, omega) * active.to(device)[:, None, None, None]
            lattice += update
            step = voxels.take(evaluate_lattice(update, bases))
            measure = _convergence(step, voxels.valid).cpu()  # the one host synchronisation per iteration
            field = field + step
            iterations[active, level] += 1
            convergence[active, level] = measure[active]
            active &= measure > settings.convergence_threshold  # NaN (empty mask) stops at once
            if not bool(active.any()):
                break
        lattices.append(lattice)
    return lattices, iterations, convergence


class MaskedVoxels:
    """The masked voxels of each sample, gathered into rows ``[B, N]`` padded to the largest count.

    Example
    -------
    >>> voxels = MaskedVoxels(torch.tensor([[[[True, False], [True, True]]]]))
    >>> voxels.take(torch.arange(4.0).reshape(1, 1, 2, 2)).tolist()
    [[0.0, 2.0, 3.0]]
    """

    def __init__(self, inside: torch.Tensor) -> None:
        flat = inside.reshape(len(inside), -1)
        count = int(flat.sum(dim=1).max()) if flat.numel() else 0  # one synchronisation, before the loop
        order = torch.argsort((~flat).to(torch.uint8), dim=1, stable=True)  # masked voxels first, in order
        self.index = order[:, :count]
        self.valid = flat.gather(1, self.index)

    def take(self, volume: torch.Tensor) -> torch.Tensor:
        """The values of ``volume [B, ...]`` at the masked voxels, ``[B, N]`` (padding rows hold voxel values too)."""
        return volume.reshape(len(volume), -1).gather(1, self.index)

    def put(self, values: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """A grid of ``shape``, zero except at the masked voxels, where it holds ``values``."""
        out = torch.zeros(shape[0], math.prod(shape[1:]), dtype=values.dtype, device=values.device)
        out.scatter_(1, self.index, torch.where(self.valid, values, 0.0))
        return out.reshape(shape)


def _convergence(step: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """ITK's convergence measure: the coefficient of variation of ``exp(-step)`` over the valid voxels, ``[B]``."""
    values = torch.exp(-step.to(torch.float64))
    weights = valid.to(torch.float64)
    count = weights.sum(dim=1)
    mean = (values * weights).sum(dim=1) / count
    variance = ((values - mean[:, None]).square() * weights).sum(dim=1) / (count - 1)
    return variance.sqrt() / mean


def _full_bases(shape: Sequence[int], starts: Sequence[int], sizes: Sequence[int], shrink: int,
                lattice: torch.Tensor) -> list[torch.Tensor]:
    """Bases that evaluate a lattice fitted on the shrunk grid at every voxel of the full grid."""
    bases = []
    for size, start, small, count in zip(shape, starts, sizes, lattice.shape[1:]):
        cells = count - 3
        on_small = (np.arange(size) - start) / shrink
        positions = on_small * (cells / (small - 1) if small > 1 else 0.0)
        bases.append(torch.as_tensor(bspline_basis_at(positions, count), dtype=lattice.dtype, device=lattice.device))
    return bases
