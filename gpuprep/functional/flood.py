"""Exact flood fills on large masks: a seed from 2x2x2 blocks, then a graph on the voxels left.

A flood fill (the voxels of a domain 6-connected to a seed set) has the same result from any seed
set that lies inside that result and contains the original seeds. Such a larger seed is cheap to
find on a grid of 2x2x2 blocks: two face-adjacent blocks that lie **entirely** inside the domain
are connected through their shared face, so the full blocks reached from the seeded full blocks,
upsampled, lie inside the result. Done recursively (a 1 mm brain: 4 levels down to ~13**3), it
leaves at full resolution only the partial blocks at the surface and thin corridors: a few
percent of the voxels. Those are flooded on a graph (:func:`graph_flood`): each voxel a node,
each face a edge, connected components by min-label hooking and pointer jumping, which needs a
handful of rounds whatever the shape (a corridor one voxel wide and hundreds long included),
where propagation on the grid needs one round per turn of the corridor. Pure torch: the same
code on CPU and CUDA.

On the CPU, when numba is installed, :func:`flood` (and the two morphology functions) hand the
whole fill to the run-labelling kernels of :mod:`gpuprep.functional.flood_kernels` instead:
the same voxels in one pass on one thread, no rounds, 20 to 40 times faster on a 1 mm head and
steady when the cores are busy. :func:`cpu_kernels` says which path a tensor takes.

Used by :func:`gpuprep.functional.morphology.fill_holes` and
:func:`~gpuprep.functional.morphology.largest_component` (through :func:`flood`).
"""

from __future__ import annotations

import functools
import itertools
from types import ModuleType

import torch

from .propagate import propagate_max

__all__ = ["FACTOR", "MIN_SIZE", "block_all", "cpu_kernels", "flood", "graph_flood", "upsample"]

#: Block edge in voxels, per level.
FACTOR = 2
#: Volumes whose smallest spatial side is below this are flooded directly (no coarser level).
MIN_SIZE = 16
_AXES = (-3, -2, -1)


def cpu_kernels(*tensors: torch.Tensor) -> ModuleType | None:
    """:mod:`gpuprep.functional.flood_kernels` if every tensor is on the CPU and numba imports, else None.

    None means the torch path (CUDA tensors, or no numba).

    Parameters
    ----------
    tensors:
        The tensors the fill reads and writes.

    Example
    -------
    >>> cpu_kernels(torch.zeros(2, 2, 2, device="meta")) is None
    True
    """
    if any(tensor.device.type != "cpu" for tensor in tensors):
        return None
    return _load_kernels()


@functools.lru_cache(maxsize=1)
def _load_kernels() -> ModuleType | None:
    """:mod:`gpuprep.functional.flood_kernels`, or None without numba (tests patch this to force the torch path)."""
    try:
        from . import flood_kernels
    except ImportError:
        return None
    return flood_kernels


def block_all(mask: torch.Tensor, factor: int = FACTOR, outside: bool = False) -> torch.Tensor:
    """Whether each ``factor**3`` block of ``mask [..., D, H, W]`` is entirely True (``[..., d, h, w]``).

    Sides that are not multiples of ``factor`` are padded with ``outside``; the padded blocks
    touch the border of the volume, and their voxels inside it still form a box.

    Example
    -------
    >>> m = torch.ones(1, 8, 8, 6, dtype=torch.bool)
    >>> m[0, 0, 0, 0] = False
    >>> block_all(m, 4).shape, int(block_all(m, 4).sum()), int(block_all(m, 4, outside=True).sum())
    (torch.Size([1, 2, 2, 2]), 3, 7)
    """
    pads = [(-n) % factor for n in mask.shape[-3:]]
    if any(pads):
        mask = torch.nn.functional.pad(mask, (0, pads[2], 0, pads[1], 0, pads[0]), value=outside)
    offsets = itertools.product(range(factor), repeat=3)  # the voxels of each block, as strided views
    out = mask[..., ::factor, ::factor, ::factor].clone()
    for i, j, k in offsets:
        if i or j or k:
            out &= mask[..., i::factor, j::factor, k::factor]
    return out


def upsample(coarse: torch.Tensor, shape: tuple[int, ...], factor: int = FACTOR) -> torch.Tensor:
    """Each block value of ``coarse [..., d, h, w]`` repeated over its ``factor**3`` voxels, cropped to ``shape``.

    Example
    -------
    >>> upsample(torch.tensor([[[[True, False]]]]), (1, 2, 5), 3)[0, 0].tolist()
    [[True, True, True, False, False], [True, True, True, False, False]]
    """
    *lead, d, h, w = coarse.shape
    blocks = coarse[..., :, None, :, None, :, None].expand(*lead, d, factor, h, factor, w, factor)
    fine = blocks.reshape(*lead, d * factor, h * factor, w * factor)
    return fine[..., : shape[0], : shape[1], : shape[2]].contiguous()


def graph_flood(reached: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """Add to ``reached`` (in place, and return it) every voxel of ``domain`` 6-connected to it.

    ``reached`` and ``domain`` are contiguous bool tensors ``[..., D, H, W]``, ``reached`` a
    subset of ``domain``. The voxels of ``domain`` not yet reached become the nodes of a graph
    whose edges are their shared faces; those touching ``reached`` hang from a root node 0. Only
    three passes over the volume; the rest works on the node list.
    Components are found by hooking (for every edge, the larger of its two labels is pointed at
    the smaller) and pointer jumping, until both ends of every edge carry the same label; the
    nodes labelled 0 are reached. One host read per round (a handful of rounds).

    Example
    -------
    >>> domain = torch.tensor([[[[1, 1, 1, 0, 1]]]], dtype=torch.bool)
    >>> reached = torch.tensor([[[[1, 0, 0, 0, 0]]]], dtype=torch.bool)
    >>> graph_flood(reached, domain).int().tolist()
    [[[[1, 1, 1, 0, 0]]]]
    """
    unknown = (domain & ~reached).reshape(-1)
    flat_reached = reached.view(-1)
    nodes = unknown.nonzero().squeeze(1)  # sorted flat indices: node i + 1 is voxel nodes[i]
    if nodes.numel() == 0:
        return reached
    parent = torch.arange(nodes.numel() + 1, device=nodes.device)
    ids = parent[1:]
    starts, ends = [], []
    stride = 1
    for n in reversed(reached.shape[-3:]):  # W, H, D: neighbours ``stride`` apart in the flat index
        coordinate = torch.div(nodes, stride, rounding_mode="floor").remainder_(n)
        has_next, has_previous = coordinate < n - 1, coordinate > 0
        following = nodes[has_next] + stride
        joined = unknown[following]
        starts.append(ids[has_next][joined])
        ends.append(torch.searchsorted(nodes, following[joined]) + 1)
        touches = torch.zeros_like(has_next)
        touches[has_next] = flat_reached[following]
        touches[has_previous] |= flat_reached[nodes[has_previous] - stride]
        parent[1:][touches] = 0
        stride *= n
    start, end = torch.cat(starts), torch.cat(ends)
    while True:
        label_start, label_end = parent[start], parent[end]
        if torch.equal(label_start, label_end):  # the one host read per round
            break
        parent.scatter_reduce_(0, torch.maximum(label_start, label_end), torch.minimum(label_start, label_end), "amin")
        for _ in range(2):
            parent = parent[parent]
    flat_reached[nodes[parent[1:] == 0]] = True
    return reached


def flood(seed: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """The voxels of ``domain`` 6-connected to ``seed`` (bool, a subset of ``domain``; modified in place).

    Exact. On the CPU with numba, by :func:`gpuprep.functional.flood_kernels.flood_cpu` (seeds and
    domain of one shape; a non-contiguous ``seed`` is not modified). Otherwise seeded from the
    same flood fill on 2x2x2 blocks and finished by :func:`graph_flood`; volumes under
    :data:`MIN_SIZE` a side by :func:`~gpuprep.functional.propagate.propagate_max`.

    Example
    -------
    >>> domain = torch.ones(1, 20, 20, 20, dtype=torch.bool)
    >>> domain[0, 10] = False  # a wall splits the volume in two
    >>> seed = torch.zeros_like(domain)
    >>> seed[0, 0, 0, 0] = True
    >>> int(flood(seed, domain).sum())
    4000
    """
    kernels = cpu_kernels(seed, domain)
    if kernels is not None and seed.shape == domain.shape:
        return kernels.flood_cpu(seed, domain)
    if min(domain.shape[-3:]) < MIN_SIZE:
        return propagate_max(seed, domain)
    blocks = block_all(domain, FACTOR, outside=True)
    seeded = ~block_all(~seed, FACTOR, outside=True) & blocks  # full blocks holding a seed voxel
    seed |= upsample(flood(seeded, blocks), domain.shape[-3:], FACTOR)
    return graph_flood(seed, domain.contiguous())
