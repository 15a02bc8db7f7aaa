"""The fixed image's sample points of a registration level, and which points a transform maps inside the moving image.

Registration scores a pair at random points of the fixed image, as elastix and ITK do. A point
counts only if it lies in the fixed mask and the transform maps it inside the moving image: a
cropped scan registered to a template covers a small part of it (a few per cent), and points
mapped into the moving image's zero padding would pull it towards matching that padding.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

from ..functional.transform_models import map_points, sample_world

__all__ = ["MAX_DRAW_FACTOR", "inside_grid", "inside_moving", "sample_fixed_points"]

MAX_DRAW_FACTOR = 64  # at most this many candidates per wanted point (a scan covering under 2 % of the fixed image)


def inside_grid(points: torch.Tensor, world_to_voxel: torch.Tensor, shape) -> torch.Tensor:
    """``[B, N]``: whether each world point falls within the grid (voxel coordinates in ``[0, size - 1]``).

    The metric leaves out the points a transform maps outside the moving image, as ITK's and
    elastix's metrics do: a moving scan that covers only part of the fixed one (a slab, a cropped
    brain) would otherwise be pulled to match its zero padding.

    Example
    -------
    >>> inside_grid(torch.tensor([[[0.0, 0, 0], [4.5, 0, 0]]]), torch.eye(4)[None], (4, 4, 4)).tolist()
    [[True, False]]
    """
    voxel = map_points(world_to_voxel, points)
    sizes = torch.tensor([float(n - 1) for n in shape], dtype=voxel.dtype, device=voxel.device)
    return ((voxel >= 0) & (voxel <= sizes)).all(dim=-1)


def inside_moving(matrix: torch.Tensor, world_to_voxel: torch.Tensor, shape) -> Callable[[torch.Tensor], torch.Tensor]:
    """The test ``points [B, N, 3] -> [B, N]``: does ``matrix`` (fixed world to moving world) map them into the grid?

    Example
    -------
    >>> test = inside_moving(torch.eye(4)[None], torch.eye(4)[None], (4, 4, 4))
    >>> test(torch.tensor([[[1.0, 1, 1], [-1.0, 0, 0]]])).tolist()
    [[True, False]]
    """
    return functools.partial(_maps_inside, matrix, world_to_voxel, tuple(shape))


def _maps_inside(matrix: torch.Tensor, world_to_voxel: torch.Tensor, shape, points: torch.Tensor) -> torch.Tensor:
    return inside_grid(map_points(matrix.to(points.dtype), points), world_to_voxel.to(points.dtype), shape)


def sample_fixed_points(level: tuple[torch.Tensor, np.ndarray], mask: tuple[torch.Tensor, np.ndarray] | None,
                        count: int, seed: int,
                        maps_inside: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``[B, N, 3]`` at ``count`` random places of the fixed image, and its values there ``[B, 1, N]``.

    Each point is a random voxel moved by a random offset within it, and the fixed image is read
    there by trilinear interpolation, as elastix's random-coordinate sampler does: points on the
    voxel centres would favour transforms that put them on the moving grid's centres too (where
    interpolation does not blur), a bias of mutual information towards whole-voxel shifts.

    Candidates are drawn in rounds (``count``, then twice as many, ...) from ``seed``, up to
    ``MAX_DRAW_FACTOR * count``, until every pair has ``count`` useful ones: in the mask and mapped
    inside the moving image by ``maps_inside`` (as elastix's sampler redraws until enough samples
    are valid). Each pair keeps its first ``count`` useful candidates, then, if too few, its first
    others, so a pair gets the same points in a batch as alone. Points outside the mask have the
    value NaN (weightless); the metric still checks at every iteration which points map inside.

    Parameters
    ----------
    level:
        The fixed level's volume ``[B, C, D, H, W]`` and affines ``[B, 4, 4]``.
    mask:
        The fixed mask's level (same grid), or None.
    count:
        The number of points per pair.
    seed:
        The seed of this level's draws.
    maps_inside:
        :func:`inside_moving` of the level's starting transform.

    Example
    -------
    >>> volume = torch.rand(1, 1, 8, 8, 8)
    >>> everywhere = inside_moving(torch.eye(4, dtype=torch.float64)[None], torch.eye(4)[None], (99, 99, 99))
    >>> points, values = sample_fixed_points((volume, np.eye(4)[None]), None, 100, 0, everywhere)
    >>> tuple(points.shape), tuple(values.shape)
    ((1, 100, 3), (1, 1, 100))
    """
    volume, affines = level
    affines_t = torch.from_numpy(affines).to(volume.device)
    to_voxel = torch.linalg.inv(affines_t)
    generator = torch.Generator().manual_seed(seed)
    rounds, drawn, size = [], 0, count
    while True:
        rounds.append(_candidates(volume, affines_t, to_voxel, mask, size, generator, maps_inside))
        drawn += size
        useful_per_pair = sum(useful.sum(dim=1) for *_, useful in rounds)
        enough = int(useful_per_pair.min()) >= count
        if enough or drawn >= MAX_DRAW_FACTOR * count or drawn >= math.prod(volume.shape[2:]):
            break
        size = min(2 * size, MAX_DRAW_FACTOR * count - drawn)
    index, points, values, useful = (torch.cat(parts, dim=dim) for parts, dim in zip(zip(*rounds), (0, 1, 2, 1)))
    return _keep_useful(index, points, values, useful, count)


def _candidates(volume, affines, to_voxel, mask, count, generator, maps_inside):
    """``count`` random voxels ``[N]``, points in them ``[B, N, 3]``, values ``[B, 1, N]``, useful ones ``[B, N]``."""
    index = torch.randint(math.prod(volume.shape[2:]), (count,), generator=generator)
    offset = torch.rand(count, 3, generator=generator, dtype=torch.float64) - 0.5
    grid = torch.stack(torch.unravel_index(index, volume.shape[2:]), dim=-1).to(torch.float64) + offset
    sizes = torch.tensor(volume.shape[2:], dtype=torch.float64)
    grid = torch.minimum(grid.clamp(min=0.0), sizes - 1)  # stay within the image
    points = map_points(affines, grid.to(volume.device).expand(len(affines), -1, -1))
    values = sample_world(volume[:, :1].float(), to_voxel, points)
    useful = maps_inside(points)
    if mask is not None:
        in_mask = sample_world(mask[0].float(), to_voxel, points) > 0.5
        values = torch.where(in_mask, values, torch.nan)  # weightless
        useful = useful & in_mask[:, 0]
    return index, points, values, useful


def _keep_useful(index: torch.Tensor, points: torch.Tensor, values: torch.Tensor, useful: torch.Tensor,
                 count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair, its first ``count`` candidates (drawn in random order), the useful ones first, sorted by voxel.

    Sorted by voxel ``index``, so that the moving image is read in about memory order (a
    near-identity transform keeps the order).
    """
    batch, drawn = useful.shape
    rank = torch.arange(drawn, device=useful.device).expand(batch, drawn)
    first = torch.where(useful, rank, rank + drawn).argsort(dim=1)[:, :min(count, drawn)]
    voxel = index.to(useful.device)[first]
    order = torch.gather(first, 1, voxel.argsort(dim=1, stable=True))
    return torch.gather(points, 1, order[..., None].expand(-1, -1, 3)), torch.gather(values, 2, order[:, None])
