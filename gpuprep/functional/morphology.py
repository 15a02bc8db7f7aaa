"""Binary morphology on batched masks ``[..., D, H, W]``: ball dilation/erosion/closing, hole filling,
connected components. Pure torch, the same code on CPU and CUDA.

Every leading dimension is a batch dimension; each ``[D, H, W]`` volume is processed on its own
(no cross-talk between samples or channels). Masks are boolean tensors (any dtype is accepted
and read as ``!= 0``).

How it is done (and why it is fast on a CPU too):

* **Ball dilation** is the union of a few box dilations: a digital ball
  ``{i**2 + j**2 + k**2 <= r**2}`` is the union of the boxes ``[-a, a] x [-b, b] x [-c, c]``
  spanned by its maximal lattice points (6 boxes for ``r = 3``), and a box dilation is separable
  into 1-D dilations, each a few in-place ``|=`` of shifted views. No convolution, no max-pool
  (``max_pool3d`` on the CPU is 20 to 50 times slower than shifted in-place ops).
* **Erosion** is the complement of the dilation of the complement, with the border handled
  explicitly (see :func:`binary_erosion`).
* **Flood fill and labelling** propagate a per-voxel value (a 0/1 "reached" flag, or a label)
  along runs of the domain with a segmented max-scan by recursive doubling (Hillis-Steele): in
  ``log2(n)`` in-place steps a value travels the whole length of a run, forwards and backwards,
  along each of the three axes. One *round* does this for the three axes, so a value can turn a
  corner per round: a head mask is labelled in 3-4 rounds, the outside of a brain with deep
  sulci flooded in about 15, a serpentine corridor needs one round per turn. Labelling also
  uses union-find style hooking and pointer jumping (see :func:`_propagate_max`), which keeps
  even random maze-like masks at 4-8 rounds. After each round one boolean ("did anything
  change?") is read back to the host: that is the only device synchronisation, once per round
  (a round replaces up to ``D + H + W`` steps of the usual one-voxel-per-step max-pool
  propagation, so this is rarer than checking every 8-16 max-pool iterations). All buffers are
  allocated once per call; the loop runs in-place ops only.

Timings (one CPU thread, 128**3): ball closing r=2 8 ms, fill_holes 30 ms (head) to 0.2 s (brain
with sulci), largest_component 0.15-0.25 s (head) to 0.6 s (random maze); scipy.ndimage takes
8 ms to label but 60 ms to fill holes and 160 ms for a ball closing.

Connectivity is 6 (faces), matching the default structures of :func:`scipy.ndimage.label` and
:func:`scipy.ndimage.binary_fill_holes` (``generate_binary_structure(3, 1)``).
"""

from __future__ import annotations

import math

import torch

from .flood import FACTOR, MIN_SIZE, block_all, graph_flood, upsample

__all__ = [
    "ball",
    "binary_closing",
    "binary_dilation",
    "binary_erosion",
    "component_labels",
    "fill_holes",
    "largest_component",
]

_AXES = (-3, -2, -1)


def _as_mask(mask: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.ndim < 3:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"expected a mask tensor [..., D, H, W], got {shape}")
    return mask if mask.dtype == torch.bool else mask != 0


def _check_radius(radius: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius must be a non-negative integer (voxels), got {radius!r}")
    return radius


def ball(radius: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The digital ball ``{(i, j, k): i**2 + j**2 + k**2 <= radius**2}`` as a bool tensor ``[2r+1]**3``.

    Identical to :func:`skimage.morphology.ball` (``strict_radius=True``, its default).

    Example
    -------
    >>> int(ball(1).sum()), int(ball(3).sum())
    (7, 123)
    """
    radius = _check_radius(radius)
    r = torch.arange(-radius, radius + 1, device=device)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius**2


def _ball_boxes(radius: int) -> list[tuple[int, int, int]]:
    """Half-extents ``(a, b, c)`` of the maximal boxes whose union is the digital ball."""
    points = [
        (a, b, c)
        for a in range(radius + 1)
        for b in range(radius + 1)
        for c in range(radius + 1)
        if a * a + b * b + c * c <= radius * radius
    ]
    maximal = []
    for p in points:
        dominated = any(q != p and q[0] >= p[0] and q[1] >= p[1] and q[2] >= p[2] for q in points)
        if not dominated:
            maximal.append(p)
    return sorted(maximal)


def _dilate_axis(mask: torch.Tensor, axis: int, half: int) -> torch.Tensor:
    """1-D dilation by ``[-half, half]`` along ``axis`` (outside the volume counts as background)."""
    out = mask.clone()
    length = mask.shape[axis]
    for shift in range(1, min(half, length - 1) + 1):
        out.narrow(axis, shift, length - shift).bitwise_or_(mask.narrow(axis, 0, length - shift))
        out.narrow(axis, 0, length - shift).bitwise_or_(mask.narrow(axis, shift, length - shift))
    return out


def _dilate_ball(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius == 0:
        return mask.clone()
    out = torch.zeros_like(mask)
    by_d: dict[int, torch.Tensor] = {}
    by_dh: dict[tuple[int, int], torch.Tensor] = {}
    for a, b, c in _ball_boxes(radius):
        if a not in by_d:
            by_d[a] = _dilate_axis(mask, -3, a)
        if (a, b) not in by_dh:
            by_dh[(a, b)] = _dilate_axis(by_d[a], -2, b)
        out.bitwise_or_(_dilate_axis(by_dh[(a, b)], -1, c))
    return out


def binary_dilation(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilate binary masks ``[..., D, H, W]`` with a ball of ``radius`` voxels.

    Equals ``scipy.ndimage.binary_dilation(mask, structure=skimage.morphology.ball(radius))`` per
    volume (outside the volume is background, scipy's ``border_value=0``).

    Example
    -------
    >>> m = torch.zeros(1, 5, 5, 5, dtype=torch.bool)
    >>> m[0, 2, 2, 2] = True
    >>> int(binary_dilation(m, 1).sum())
    7
    """
    return _dilate_ball(_as_mask(mask), _check_radius(radius))


def binary_erosion(mask: torch.Tensor, radius: int, border_value: bool = False) -> torch.Tensor:
    """Erode binary masks ``[..., D, H, W]`` with a ball of ``radius`` voxels.

    Equals ``scipy.ndimage.binary_erosion(mask, structure=ball(radius), border_value=border_value)``
    per volume: with ``border_value=False`` (scipy's default) the outside of the volume counts
    as background, so foreground within ``radius`` of the border is eroded; with ``True`` it
    counts as foreground.

    Example
    -------
    >>> m = torch.ones(1, 5, 5, 5, dtype=torch.bool)
    >>> int(binary_erosion(m, 1).sum()), int(binary_erosion(m, 1, border_value=True).sum())
    (27, 125)
    """
    mask, radius = _as_mask(mask), _check_radius(radius)
    if radius == 0:
        return mask.clone()
    complement = ~mask
    if not border_value:  # the outside is background: pad the complement with foreground
        complement = torch.nn.functional.pad(complement, (radius,) * 6, value=True)
        grown = _dilate_ball(complement, radius)
        crop = [slice(None)] * (mask.ndim - 3) + [slice(radius, -radius)] * 3
        return ~grown[tuple(crop)]
    return ~_dilate_ball(complement, radius)


def binary_closing(mask: torch.Tensor, radius: int, pad: bool = True) -> torch.Tensor:
    """Close binary masks ``[..., D, H, W]`` (dilate, then erode) with a ball of ``radius`` voxels.

    Parameters
    ----------
    mask:
        Binary masks.
    radius:
        Ball radius in voxels (an anisotropic grid gives an ellipsoid in millimetres).
    pad:
        Border handling. True (default): the volume is treated as surrounded by background and
        closed without border artefacts, i.e. the result equals
        ``scipy.ndimage.binary_closing(np.pad(mask, radius), ball(radius))[r:-r, r:-r, r:-r]``;
        an object touching the border keeps its border voxels. False: exactly
        ``scipy.ndimage.binary_closing(mask, ball(radius))``, whose erosion (``border_value=0``)
        removes foreground within ``radius`` of the border.

    Example
    -------
    >>> m = torch.ones(1, 7, 7, 7, dtype=torch.bool)
    >>> m[0, 3, 3, 3] = False  # a one-voxel hole is closed
    >>> bool(binary_closing(m, 1).all()), int(binary_closing(m, 1, pad=False).sum())
    (True, 125)
    """
    mask, radius = _as_mask(mask), _check_radius(radius)
    if radius == 0:
        return mask.clone()
    if not pad:
        return binary_erosion(_dilate_ball(mask, radius), radius, border_value=False)
    padded = torch.nn.functional.pad(mask, (radius,) * 6, value=False)
    # Eroding the padded volume reads only inside it for the voxels we keep: border value moot.
    closed = ~_dilate_ball(~_dilate_ball(padded, radius), radius)
    crop = [slice(None)] * (mask.ndim - 3) + [slice(radius, -radius)] * 3
    return closed[tuple(crop)].contiguous()


# -- propagation along runs ----------------------------------------------------------------


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


def _propagate_max(
    values: torch.Tensor, domain: torch.Tensor, *, pointers: bool = False, max_rounds: int | None = None
) -> torch.Tensor:
    """Spread the maximum of ``values`` over each 6-connected component of ``domain``, in place.

    ``values`` (non-negative integers or booleans, 0 outside ``domain``) is modified and returned. Each round
    runs :func:`_sweep`, then one host read checks whether anything changed.

    With ``pointers=True`` the values must be labels ``N - i`` naming a voxel ``i`` of the same
    volume and component (as made by :func:`component_labels`). Each round then also does
    union-find style *hooking* (the voxel a label names gets the larger label that replaced it)
    and *pointer jumping* (every voxel takes the label held by the voxel its label names). Both
    only move labels within a component, so the fixed point is the same, but information now
    also travels along pointers: a maze-like mask needs a handful of rounds instead of dozens.
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
        if pointers:
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


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """Fill the holes of binary masks ``[..., D, H, W]``: background not 6-connected to the border.

    Equals :func:`scipy.ndimage.binary_fill_holes` (default structure, 6-connectivity) on each
    volume. Iterative: one host read per propagation round (see the module docstring).

    Example
    -------
    >>> m = torch.ones(1, 5, 5, 5, dtype=torch.bool)
    >>> m[0, 2, 2, 2] = False
    >>> bool(fill_holes(m).all())
    True
    """
    mask = _as_mask(mask)
    background = ~mask
    return ~_flood(_border(background), background)


def _flood(seed: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """The voxels of ``domain`` 6-connected to ``seed`` (bool, a subset of ``domain``; modified in place).

    Exact; seeded from the same flood fill on 2x2x2 blocks, the rest on a graph (see
    :mod:`gpuprep.functional.flood`).
    """
    if min(domain.shape[-3:]) < MIN_SIZE:
        return _propagate_max(seed, domain)
    blocks = block_all(domain, FACTOR, outside=True)
    seeded = ~block_all(~seed, FACTOR, outside=True) & blocks  # full blocks holding a seed voxel
    seed |= upsample(_flood(seeded, blocks), domain.shape[-3:], FACTOR)
    return graph_flood(seed, domain.contiguous())


def _border(domain: torch.Tensor) -> torch.Tensor:
    """The voxels of ``domain`` on the faces of the volume."""
    reached = torch.zeros(domain.shape, dtype=torch.bool, device=domain.device)
    for axis in _AXES:
        n = domain.shape[axis]
        for index in {0, n - 1}:
            reached.narrow(axis, index, 1).copy_(domain.narrow(axis, index, 1))
    return reached


def component_labels(mask: torch.Tensor) -> torch.Tensor:
    """Label the 6-connected components of binary masks ``[..., D, H, W]``.

    Every voxel of a component gets ``N - i`` where ``i`` is the smallest raster index
    (``d * H * W + h * W + w``) of the component and ``N = D * H * W``; background gets 0. Labels
    are therefore unique per volume, and a larger label means a component met earlier in raster
    order (the order in which :func:`scipy.ndimage.label` numbers components). The labels are
    int32 (int64 for volumes of 2**31 voxels or more); they are not consecutive.

    Example
    -------
    >>> m = torch.tensor([[[[1, 0, 1, 1]]]], dtype=torch.bool)
    >>> component_labels(m).tolist()
    [[[[4, 0, 2, 2]]]]
    """
    mask = _as_mask(mask)
    n = math.prod(mask.shape[-3:])
    dtype = torch.int32 if n < 2**31 - 1 else torch.int64
    index = torch.arange(n, 0, -1, dtype=dtype, device=mask.device).reshape(mask.shape[-3:])
    labels = torch.where(mask, index, torch.zeros((), dtype=dtype, device=mask.device))
    return _propagate_max(labels.contiguous(), mask, pointers=True)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """Keep the largest 6-connected component of each binary mask ``[..., D, H, W]``.

    Matches ``labels == 1 + argmax(bincount(labels)[1:])`` with ``labels = scipy.ndimage.label(mask)[0]``:
    among components of equal size the one met first in raster order wins. An empty mask stays
    empty.

    Example
    -------
    >>> m = torch.tensor([[[[1, 0, 1, 1]]]], dtype=torch.bool)
    >>> largest_component(m).tolist()
    [[[[False, False, True, True]]]]
    """
    return _largest_component(_as_mask(mask))


def _largest_component(mask: torch.Tensor) -> torch.Tensor:
    if min(mask.shape[-3:]) < MIN_SIZE:
        return _largest_by_labels(mask)
    # Flood the mask from the largest component of its fully-foreground 2x2x2 blocks. Whatever is
    # reached is one component; holding more than half of the foreground, it is the largest.
    blocks = block_all(mask, FACTOR, outside=True)
    reached = _flood(upsample(_largest_component(blocks), mask.shape[-3:], FACTOR), mask)
    volumes = reached.reshape(-1, *mask.shape[-3:])
    counts = _count(volumes)
    totals = _count(mask.reshape(volumes.shape))
    unsure = 2 * counts <= totals
    if bool(unsure.any()):  # e.g. two blobs of similar size: label every component
        volumes[unsure] = _largest_by_labels(mask.reshape(volumes.shape)[unsure])
    return reached


def _count(volumes: torch.Tensor) -> torch.Tensor:
    """True voxels per volume of bool ``[N, D, H, W]`` (summed as bytes: twice as fast as bools)."""
    return volumes.contiguous().view(torch.uint8).flatten(1).sum(1)


def _largest_by_labels(mask: torch.Tensor) -> torch.Tensor:
    """:func:`largest_component` by labelling every component of ``mask`` (bool)."""
    n = math.prod(mask.shape[-3:])
    rows = component_labels(mask).reshape(-1, n)
    count = rows.shape[0]
    index_dtype = torch.int32 if count * (n + 1) < 2**31 else torch.int64
    offsets = torch.arange(count, device=mask.device, dtype=index_dtype)[:, None] * (n + 1)
    flat = (rows.to(index_dtype) + offsets).reshape(-1)
    sizes = torch.zeros(count * (n + 1), dtype=torch.int64, device=mask.device)
    sizes.index_add_(0, flat, torch.ones(1, dtype=torch.int64, device=mask.device).expand(flat.numel()))
    foreground = rows > 0
    size_of_voxel = sizes.index_select(0, flat).reshape(count, n).mul_(foreground)
    # The largest size, then among components of that size the largest label (= met first).
    best_size = size_of_voxel.amax(dim=1, keepdim=True)
    zero = torch.zeros((), dtype=rows.dtype, device=mask.device)
    best_label = torch.where(foreground & (size_of_voxel == best_size), rows, zero).amax(dim=1, keepdim=True)
    return ((rows == best_label) & foreground).reshape(mask.shape)
