"""Propagation along runs: the flood fill and labelling engine of :mod:`gpuprep.functional.morphology`.

Flood fill and labelling propagate a per-voxel value (a 0/1 "reached" flag, or a label)
along runs of the domain with a segmented max-scan by recursive doubling (Hillis-Steele): in
``log2(n)`` in-place steps a value travels the whole length of a run, forwards and backwards,
along each of the three axes. One *round* does this for the three axes, so a value can turn a
corner per round: a head mask is labelled in 3-4 rounds, the outside of a brain with deep
sulci flooded in about 15, a serpentine corridor needs one round per turn. Labelling also
uses union-find style hooking and pointer jumping (see :func:`propagate_max`), which keeps
even random maze-like masks at 4-8 rounds. After each round one boolean ("did anything
change?") is read back to the host: that is the only device synchronisation, once per round
(a round replaces up to ``D + H + W`` steps of the usual one-voxel-per-step max-pool
propagation, so this is rarer than checking every 8-16 max-pool iterations). All buffers are
allocated once per call; the loop runs in-place ops only.
"""

from __future__ import annotations

import math

import torch

__all__ = ["propagate_max"]

_AXES = (-3, -2, -1)


def _links(domain: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
    """For each axis and direction, whether a voxel is joined to its neighbour (both in ``domain``)."""
    links = []
    for axis in _AXES:
        n = domain.shape[axis]
        if n < 2:
            continue
        joined = domain.narrow(axis, 1, n - 1) & domain.narrow(axis, 0, n - 1)
        forward = torch.zeros_like(domain)  # voxel i joined to i - 1
        forward.narrow(axis, 1, n - 1).copy_(joined)
        backward = torch.zeros_like(domain)  # voxel i joined to i + 1
        backward.narrow(axis, 0, n - 1).copy_(joined)
        links += [(axis, 1, forward), (axis, -1, backward)]
    return links


def _sweep(values: torch.Tensor, links: list, gated: torch.Tensor, pair: list[torch.Tensor]) -> None:
    """One round: a segmented max-scan along every axis, both ways, by recursive doubling (in place).

    Forward step with shift ``s``: ``v[i] = max(v[i], v[i - s])`` if voxels ``i - s .. i`` are all
    joined; by induction ``v[i]`` then holds the maximum over the joined run of length ``2s``
    ending at ``i``, and "joined over 2s" is "joined over s" at ``i`` and at ``i - s`` (voxels
    closer than ``2s`` to the start are never joined over ``2s``). After ``log2(n)`` steps every
    voxel holds the maximum of its run up to it; the backward scan completes the run. The links
    are kept as 0/1 in the dtype of ``values`` so that every op is a same-dtype in-place kernel,
    and ping-pong between the two buffers of ``pair``.
    """
    for axis, direction, initial in links:
        n = values.shape[axis]
        link, spare = pair
        link.copy_(initial)
        shift = 1
        while shift < n:
            keep = n - shift
            dst, src = (shift, 0) if direction == 1 else (0, shift)
            out = values.narrow(axis, dst, keep)
            g = gated.narrow(axis, dst, keep)
            torch.mul(values.narrow(axis, src, keep), link.narrow(axis, dst, keep), out=g)
            torch.maximum(out, g, out=out)
            if shift * 2 < n:
                torch.mul(
                    link.narrow(axis, dst, keep),
                    link.narrow(axis, src, keep),
                    out=spare.narrow(axis, dst, keep),
                )
                spare.narrow(axis, src if direction == 1 else keep, shift).zero_()
                link, spare = spare, link
            shift *= 2


def propagate_max(
    values: torch.Tensor, domain: torch.Tensor, *, pointers: bool = False, max_rounds: int | None = None
) -> torch.Tensor:
    """Spread the maximum of ``values`` over each 6-connected component of ``domain``, in place.

    ``values`` (non-negative integers or booleans, 0 outside ``domain``) is modified and returned. Each round
    runs :func:`_sweep`, then one host read checks whether anything changed.

    With ``pointers=True`` the values must be labels ``N - i`` naming a voxel ``i`` of the same
    volume and component (as made by :func:`gpuprep.functional.morphology.component_labels`). Each round then also does
    union-find style *hooking* (the voxel a label names gets the larger label that replaced it)
    and *pointer jumping* (every voxel takes the label held by the voxel its label names). Both
    only move labels within a component, so the fixed point is the same, but information now
    also travels along pointers: a maze-like mask needs a handful of rounds instead of dozens.

    Example
    -------
    >>> domain = torch.tensor([[[[1, 1, 0, 1, 1]]]], dtype=torch.bool)
    >>> propagate_max(torch.tensor([[[[0, 3, 0, 1, 0]]]]), domain).tolist()
    [[[[3, 3, 0, 1, 1]]]]
    """
    gated = torch.zeros_like(values)
    pair = [torch.empty_like(values), torch.empty_like(values)]
    previous = torch.empty_like(values)
    links = _links(domain)
    n = math.prod(values.shape[-3:])
    rows = values.view(-1, n)
    inside = domain.reshape(-1, n).to(values.dtype)
    named_buffer = torch.empty(rows.shape, dtype=torch.int64, device=values.device) if pointers else None
    limit = max_rounds if max_rounds is not None else n + 1
    for _ in range(limit):
        previous.copy_(values)
        _sweep(values, links, gated, pair)
        if named_buffer is not None:  # pointers
            # Hooking: the voxel an old label named learns the label that replaced it.
            named = named_buffer.copy_(previous.view(-1, n)).neg_().add_(n).clamp_(0, n - 1)
            gated.copy_(values)
            rows.scatter_reduce_(1, named, gated.view(-1, n), "amax")
            # Pointer jumping (twice): take the label held by the voxel one's label names.
            for _ in range(2):
                named.copy_(rows).neg_().add_(n).clamp_(0, n - 1)
                pulled = rows.gather(1, named).mul_(inside)
                torch.maximum(rows, pulled, out=rows)
        if torch.equal(values, previous):  # the one host read per round
            break
    return values
