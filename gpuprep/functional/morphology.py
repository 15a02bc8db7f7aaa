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
* **Flood fill and labelling** propagate values along runs of the mask
  (:mod:`gpuprep.functional.propagate`); on volumes of 16 voxels a side or more, the flood fills
  of :func:`fill_holes` and :func:`largest_component` start from a seed found on 2x2x2 blocks and
  finish on a graph of the few voxels left (:mod:`gpuprep.functional.flood`). All exact.
  On the CPU with numba, :func:`fill_holes` and :func:`largest_component` label the runs of the
  mask instead (:mod:`gpuprep.functional.flood_kernels`: one thread, one pass, no rounds).

Timings (the 1 mm MNI T1's Otsu mask, 197 x 233 x 189, a shared 2-core CPU, warm medians):
largest_component then fill_holes 15 ms with numba (scipy.ndimage: 0.4 s; the torch path:
0.4 s on one thread, seconds on two busy ones; the propagation over the whole grid took 4 s).
Ball closing r=2 on 128**3: 8 ms (scipy 160 ms).

Connectivity is 6 (faces), matching the default structures of :func:`scipy.ndimage.label` and
:func:`scipy.ndimage.binary_fill_holes` (``generate_binary_structure(3, 1)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .flood import FACTOR, MIN_SIZE, block_all, cpu_kernels, flood, upsample
from .propagate import propagate_max

__all__ = [
    "ball",
    "binary_closing",
    "binary_dilation",
    "binary_erosion",
    "bounding_box",
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


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """Fill the holes of binary masks ``[..., D, H, W]``: background not 6-connected to the border.

    Equals :func:`scipy.ndimage.binary_fill_holes` (default structure, 6-connectivity) on each
    volume. On the CPU with numba, the background components that reach a face are found by
    labelling runs (:func:`gpuprep.functional.flood_kernels.fill_holes_cpu`); otherwise a
    seeded flood with a handful of host reads (see the module docstring).

    Example
    -------
    >>> m = torch.ones(1, 5, 5, 5, dtype=torch.bool)
    >>> m[0, 2, 2, 2] = False
    >>> bool(fill_holes(m).all())
    True
    """
    mask = _as_mask(mask)
    kernels = cpu_kernels(mask)
    if kernels is not None:
        return kernels.fill_holes_cpu(mask)
    background = ~mask
    return ~flood(_border(background), background)


def _border(domain: torch.Tensor) -> torch.Tensor:
    """The voxels of ``domain`` on the faces of the volume."""
    reached = torch.zeros(domain.shape, dtype=torch.bool, device=domain.device)
    for axis in _AXES:
        n = domain.shape[axis]
        for index in {0, n - 1}:
            reached.narrow(axis, index, 1).copy_(domain.narrow(axis, index, 1))
    return reached


def bounding_box(mask: torch.Tensor, margin: int | Sequence[int] = 0) -> tuple[slice, slice, slice] | None:
    """The bounding box of the nonzero voxels of one volume ``[D, H, W]``, as slices; ``None`` if there are none.

    ``margin`` voxels (one number, or one per axis) are added on every side, clipped to the
    volume. Three small host reads (one per axis).

    Example
    -------
    >>> m = torch.zeros(6, 6, 6, dtype=torch.bool)
    >>> m[2:4, 1, 3:5] = True
    >>> bounding_box(m, margin=1)
    (slice(1, 5, None), slice(0, 3, None), slice(2, 6, None))
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim != 3:
        raise ValueError(f"bounding_box: expected one volume [D, H, W], got {getattr(mask, 'shape', mask)!r}")
    margins = (margin,) * 3 if isinstance(margin, int) else tuple(margin)
    if len(margins) != 3 or any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in margins):
        raise ValueError(f"bounding_box: margin must be a non-negative int or three of them, got {margin!r}")
    nonzero = _as_mask(mask)
    box = []
    for axis, extra in enumerate(margins):
        others = [a for a in range(3) if a != axis]
        index = torch.nonzero(nonzero.any(dim=others[1]).any(dim=others[0])).flatten()
        if index.numel() == 0:
            return None
        low, high = int(index[0]), int(index[-1]) + 1
        box.append(slice(max(0, low - extra), min(mask.shape[axis], high + extra)))
    d, h, w = box
    return d, h, w


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
    return propagate_max(labels.contiguous(), mask, pointers=True)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """Keep the largest 6-connected component of each binary mask ``[..., D, H, W]``.

    Matches ``labels == 1 + argmax(bincount(labels)[1:])`` with ``labels = scipy.ndimage.label(mask)[0]``:
    among components of equal size the one met first in raster order wins. An empty mask stays
    empty. On the CPU with numba by
    :func:`gpuprep.functional.flood_kernels.largest_component_cpu` (every component labelled and
    sized once).

    Example
    -------
    >>> m = torch.tensor([[[[1, 0, 1, 1]]]], dtype=torch.bool)
    >>> largest_component(m).tolist()
    [[[[False, False, True, True]]]]
    """
    mask = _as_mask(mask)
    kernels = cpu_kernels(mask)
    if kernels is not None:
        return kernels.largest_component_cpu(mask)
    return _largest_component(mask)


def _largest_component(mask: torch.Tensor) -> torch.Tensor:
    if min(mask.shape[-3:]) < MIN_SIZE:
        return _largest_by_labels(mask)
    # Flood the mask from the largest component of its fully-foreground 2x2x2 blocks. Whatever is
    # reached is one component; holding more than half of the foreground, it is the largest.
    blocks = block_all(mask, FACTOR, outside=True)
    reached = flood(upsample(_largest_component(blocks), mask.shape[-3:], FACTOR), mask)
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
