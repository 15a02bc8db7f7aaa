"""The one resampler: read a batch of volumes at ``voxel_map @ output voxel`` for every output voxel.

Every spatial step of gpuprep (reorientation, rescaling, cropping, padding, flipping, and the
fused chain of several such steps) ends up here as a voxel map (see
:mod:`gpuprep.functional.grid`). The map decides the path:

- **lattice maps** (signed axis permutations with integer shifts: crops, pads, flips,
  reorientation) are pure index selection: exact for any dtype;
- **separable maps** (each output axis reads one input axis: rescaling, resizing) are three
  banded 1D operators (:mod:`gpuprep.functional.axis_operators`);
- **general maps** (rotations, shears) use ``torch.nn.functional.grid_sample`` (linear), a direct
  gather (nearest), or the cubic B-spline as eight trilinear fetches of the prefiltered volume;
  on the CPU with numba installed, linear and nearest run in the fused kernels of
  :mod:`gpuprep.functional.fused_sampler` instead (same results, no sampling grid).

Samples of a batch that share a map are resampled together; distinct maps are handled group by
group (maps are metadata on the CPU, so grouping needs no device synchronisation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..validation import MODES
from .axis_operators import (
    AxisOperator,
    apply_separable,
    axis_operator,
)
from .boundary import fill_tensor
from .filters import gaussian_filter
from .fused_sampler import numba_ready, sample_grid_rule, sample_grid_rule_with_labels, sample_voxel_rule
from .grid import axis_permutation, is_lattice_map
from .resample_general import (
    _EXACT_IN_FLOAT32,
    GridCache,
    antialias,
    batchable,
    cubic_general,
    general_batched,
    linear_general,
    nearest_general,
)


def resample(
    volume: torch.Tensor,
    voxel_maps: np.ndarray | Sequence[np.ndarray],
    out_shape: Sequence[int],
    mode: str = "linear",
    anti_aliasing: bool = False,
    padding_mode: str = "zeros",
    padding_value: float | torch.Tensor = 0.0,
    *,
    cache: GridCache | None = None,
) -> torch.Tensor:
    """Resample a batch ``[B, C, D, H, W]`` onto an output grid of ``out_shape``.

    Parameters
    ----------
    volume:
        The input batch; integer dtypes need ``mode="nearest"`` and keep their dtype.
    voxel_maps:
        ``[B, 4, 4]`` (or one ``[4, 4]`` for all samples) output-voxel to input-voxel maps.
    out_shape:
        Spatial shape ``(D, H, W)`` of the output.
    mode:
        ``"nearest"``, ``"linear"`` or ``"cubic"`` (B-spline, prefiltered as in ``scipy.ndimage``).
    anti_aliasing:
        Smooth the input with a Gaussian of ``sigma = (step - 1) / 2`` input voxels along each
        axis where the output samples it more coarsely (as ``skimage.transform.resize``).
    padding_mode:
        ``"zeros"``: ``padding_value`` beyond half a voxel outside the input; ``"border"``: clamp.
    padding_value:
        The constant of ``"zeros"`` padding: a number, or a tensor broadcastable to ``[B, C, 1, 1, 1]``
        (one value per sample and channel, e.g. each one's minimum). Crops and pads are filled
        exactly; interpolating maps resample ``volume - value`` and add ``value`` back, which is the
        same thing because every kernel's weights sum to one (and the cubic prefilter keeps constants).
    cache:
        A :class:`~gpuprep.functional.resample_general.GridCache` shared by the keys resampled
        with the same maps (an image and its label maps), so they build one sampling grid.

    Example
    -------
    >>> from gpuprep.functional.grid import scaling_map
    >>> x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    >>> resample(x, scaling_map((2, 2, 2), (4, 4, 4)), (4, 4, 4)).shape
    torch.Size([1, 1, 4, 4, 4])
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if volume.ndim != 5:
        raise ValueError(f"volume must be [B, C, D, H, W], got shape {tuple(volume.shape)}")
    if not volume.is_floating_point() and mode != "nearest":
        raise TypeError(f"{volume.dtype} volumes (labels) can only be resampled with mode='nearest'")
    maps = np.asarray(voxel_maps, dtype=np.float64)
    if maps.ndim == 2:
        maps = np.broadcast_to(maps, (volume.shape[0], 4, 4))
    out_shape = tuple(int(s) for s in out_shape)
    fill = fill_tensor(volume, padding_value) if padding_mode == "zeros" else None
    if fill is not None and not all(is_lattice_map(m) for m in maps):
        if not volume.is_floating_point():  # nearest on integers: shift in float64, where it cannot overflow
            shifted = resample(volume.double() - fill.double(), maps, out_shape, mode, anti_aliasing, padding_mode,
                               cache=cache)
            return (shifted + fill.double()).round().to(volume.dtype)
        return resample(volume - fill, maps, out_shape, mode, anti_aliasing, padding_mode, cache=cache) + fill
    groups: dict[bytes, list[int]] = {}
    for index, voxel_map in enumerate(maps):
        groups.setdefault(voxel_map.tobytes(), []).append(index)
    if len(groups) == 1:
        return _resample_one_map(volume, maps[0], out_shape, mode, anti_aliasing, padding_mode, fill, cache)
    if batchable(volume, maps, mode):
        # Different rotations per sample (random augmentation): one grid_sample for the batch.
        if anti_aliasing:
            volume = antialias(volume, maps)
        if numba_ready(volume):  # the same result, without a sampling grid in memory
            return sample_grid_rule(volume, maps, out_shape, mode, padding_mode)
        return general_batched(volume, maps, out_shape, mode, padding_mode, cache)
    out = volume.new_empty((volume.shape[0], volume.shape[1], *out_shape))
    for indices in groups.values():
        part = volume[indices]
        part_fill = None if fill is None else fill[indices]
        out[indices] = _resample_one_map(part, maps[indices[0]], out_shape, mode, anti_aliasing, padding_mode,
                                         part_fill, cache)
    return out


def resample_with_labels(image: torch.Tensor, labels: torch.Tensor, voxel_maps: np.ndarray, out_shape: Sequence[int],
                         padding_mode: str = "zeros", onehot: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``resample`` of an image (linear) and of its labels (nearest) in one pass, or None where it cannot.

    ``onehot``: the labels as :func:`resample_labels` gives them (linear masks, the argmax), not
    by nearest neighbour.

    Random spatial augmentation moves an image and its label map by one map per sample; the numba
    kernel then reads both at the same points in one pass (both padded with 0 under ``"zeros"``).
    The results are those of :func:`resample` called on each. None (call :func:`resample` on
    each) unless both would be sampled by the numba grid kernels: a float32 image, integer labels
    on its grid, different general maps per sample, numba installed.

    Example
    -------
    >>> x, labels = torch.rand(2, 1, 6, 6, 6), torch.randint(0, 3, (2, 1, 6, 6, 6), dtype=torch.uint8)
    >>> maps = np.stack([np.eye(4), np.eye(4)])
    >>> maps[1, 1:3, 1:3] = [[0.96, -0.28], [0.28, 0.96]]  # a rotation
    >>> pair = resample_with_labels(x, labels, maps, (6, 6, 6))
    >>> pair is None or torch.equal(pair[1], resample(labels, maps, (6, 6, 6), "nearest"))
    True
    """
    maps = np.asarray(voxel_maps, dtype=np.float64)
    shared_grid = image.shape[0] == labels.shape[0] == len(maps) and image.shape[2:] == labels.shape[2:]
    if not (shared_grid and image.dtype == torch.float32 and labels.dtype in _EXACT_IN_FLOAT32
            and numba_ready(image) and numba_ready(labels) and not (onehot and labels.dtype == torch.int8)):
        return None
    if len({m.tobytes() for m in maps}) < 2 or not batchable(image, maps, "linear"):
        return None  # resample takes another path than the grid kernels
    return sample_grid_rule_with_labels(image, labels, maps, out_shape, padding_mode, onehot)


def _resample_one_map(volume, voxel_map, out_shape, mode, anti_aliasing, padding_mode, fill=None,
                      cache: GridCache | None = None) -> torch.Tensor:
    if padding_mode == "zeros" and is_lattice_map(voxel_map):
        return _resample_lattice(volume, voxel_map, out_shape, fill)
    permutation = axis_permutation(voxel_map)
    if permutation is not None:
        return _resample_separable(volume, voxel_map, permutation, out_shape, mode, anti_aliasing, padding_mode)
    if anti_aliasing:
        volume = antialias(volume, voxel_map)
    if mode == "cubic":
        return cubic_general(volume, voxel_map, out_shape, padding_mode)
    if numba_ready(volume) and (mode == "nearest" or volume.dtype in (torch.float32, torch.float64)):
        maps = np.broadcast_to(voxel_map, (volume.shape[0], 4, 4))
        if mode == "nearest":
            return sample_voxel_rule(volume, maps, out_shape, padding_mode)
        return sample_grid_rule(volume, maps, out_shape, mode, padding_mode)
    if mode == "nearest":
        return nearest_general(volume, voxel_map, out_shape, padding_mode)
    return linear_general(volume, voxel_map, out_shape, padding_mode, cache)


def _resample_lattice(volume: torch.Tensor, voxel_map: np.ndarray, out_shape: tuple[int, ...],
                      fill: torch.Tensor | None = None) -> torch.Tensor:
    """Crops, pads, flips and axis permutations by slicing: one copy, exact for any dtype.

    Padded voxels get 0, or ``fill`` (``[B, C, 1, 1, 1]``) when given.
    """
    permutation = axis_permutation(voxel_map)
    if permutation is None:
        raise ValueError(f"_resample_lattice needs a map that permutes, flips and shifts axes: {voxel_map.tolist()}")
    volume = volume.permute(0, 1, *(2 + p for p in permutation))
    flips = [axis for axis, source in enumerate(permutation) if voxel_map[source, axis] < 0]
    if flips:
        volume = torch.flip(volume, [2 + axis for axis in flips])
    source_slices: list[slice] = []
    target_slices: list[slice] = []
    for axis, source in enumerate(permutation):
        n_in, n_out = volume.shape[2 + axis], out_shape[axis]
        shift = round(float(voxel_map[source, 3]))
        # Flipped axes read the flipped buffer: in = shift - out becomes flipped[out + n_in - 1 - shift].
        offset = n_in - 1 - shift if axis in flips else shift
        start, stop = max(0, offset), min(n_in, offset + n_out)
        if stop <= start:  # no overlap at all along this axis
            return _background(volume, out_shape, fill)
        source_slices.append(slice(start, stop))
        target_slices.append(slice(start - offset, stop - offset))
    whole = (slice(None), slice(None))  # batch and channels
    read, write = (*whole, *source_slices), (*whole, *target_slices)
    if all(t.start == 0 and t.stop == n for t, n in zip(target_slices, out_shape)):
        return volume[read].contiguous()
    out = _background(volume, out_shape, fill)
    out[write] = volume[read]
    return out


def _background(volume: torch.Tensor, out_shape: tuple[int, ...], fill: torch.Tensor | None) -> torch.Tensor:
    shape = (*volume.shape[:2], *out_shape)
    return volume.new_zeros(shape) if fill is None else fill.expand(shape).clone()


def _resample_separable(volume, voxel_map, permutation, out_shape, mode, anti_aliasing, padding_mode):
    # Bring the input axis that feeds output axis j to position j, then resample axis by axis.
    volume = volume.permute(0, 1, *(2 + p for p in permutation))
    if mode == "linear" and padding_mode == "zeros" and volume.dtype in (torch.float32, torch.float64):
        fast = _interpolate_then_crop(volume, voxel_map, permutation, out_shape, anti_aliasing)
        if fast is not None:
            return fast
    in_shape = volume.shape[2:]
    operators: list[tuple[int, AxisOperator]] = []
    for axis, source in enumerate(permutation):
        step = voxel_map[source, axis]
        positions = step * np.arange(out_shape[axis]) + voxel_map[source, 3]
        sigma = max(0.0, (abs(step) - 1.0) / 2.0) if anti_aliasing and mode != "nearest" else 0.0
        operators.append((axis, axis_operator(positions, in_shape[axis], mode, sigma, padding_mode)))
    identity = [_is_identity(op, in_shape[axis]) for axis, op in operators]
    if all(identity):
        return volume.contiguous()
    return apply_separable(volume, [None if same else op for (_, op), same in zip(operators, identity)])


def _interpolate_then_crop(volume, voxel_map, permutation, out_shape, anti_aliasing):
    """Linear rescaling in one pass of PyTorch's trilinear kernel, then an exact crop/pad/flip.

    ``interpolate`` reads the input at ``(i + 0.5) * step - 0.5`` (clamped to the edge, our rule
    within half a voxel). When every axis of the map is that sampling shifted by a whole number
    ``k`` of output voxels (and possibly reversed), the map is that interpolation followed by a
    lattice map, so the result equals the banded operators' exactly (to float rounding) in one
    fast pass. Returns None when the map is not of that form.
    """
    steps, shifts, flipped_out, flipped_in, full_shape = [], [], [], [], []
    for axis, source in enumerate(permutation):
        step, offset, n_in = voxel_map[source, axis], voxel_map[source, 3], volume.shape[2 + axis]
        # Reading the input reversed, or writing the output reversed, are exact flips; try the
        # four combinations for one whose forward sampling lands on whole output voxels (a
        # reorientation before and a flip after a rescaling, fused, need both).
        found = None
        for flip_in, flip_out in ((False, False), (False, True), (True, False), (True, True)):
            s, o = (-step, n_in - 1 - offset) if flip_in else (step, offset)
            if flip_out:
                s, o = -s, o + s * (out_shape[axis] - 1)
            if s > 0 and _whole(_interpolation_shift(o, s)):
                found = (flip_in, flip_out, s, o)
                break
        if found is None:
            return None
        flip_in, flip_out, step, offset = found
        if flip_in:
            flipped_in.append(2 + axis)
        if flip_out:
            flipped_out.append(2 + axis)
        shift = _interpolation_shift(offset, step)
        full = max(1, round(n_in / step))  # positions within half a voxel of the input
        if full == n_in and abs(step - 1.0) > 1e-9:
            # PyTorch's kernel copies an axis whose length it keeps, ignoring the scale (torch 2.x).
            return None
        steps.append(step)
        shifts.append(round(float(shift)))
        full_shape.append(full)
    if flipped_in:
        volume = torch.flip(volume, flipped_in)
    if anti_aliasing:
        sigma = [max(0.0, (step - 1.0) / 2.0) for step in steps]
        if any(sigma):
            volume = gaussian_filter(volume, sigma, truncate=4.0, mode="nearest")
    full = torch.ops.aten.upsample_trilinear3d.default(volume, full_shape, False, *(1.0 / s for s in steps))
    crop = np.diag([1.0, 1.0, 1.0, 1.0])
    crop[:3, 3] = shifts
    out = _resample_lattice(full, crop, out_shape)
    return torch.flip(out, flipped_out) if flipped_out else out


def _interpolation_shift(offset: float, step: float) -> float:
    """How many output voxels ``offset`` lies past the trilinear kernel's first sample ``0.5 * step - 0.5``."""
    return (offset - (0.5 * step - 0.5)) / step


def _whole(value: float) -> bool:
    return abs(value - round(value)) < 1e-6


def _is_identity(operator: AxisOperator, n_in: int) -> bool:
    return (
        operator.is_selection
        and operator.size == n_in
        and bool(np.all(operator.weights[:, 0] == 1))
        and bool(np.array_equal(operator.index[:, 0], np.arange(n_in)))
    )


def resample_labels(
    labels: torch.Tensor,
    voxel_maps: np.ndarray | Sequence[np.ndarray],
    out_shape: Sequence[int],
    mode: str = "linear",
    padding_mode: str = "zeros",
    values: Sequence[int] | None = None,
    sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Resample a label map by interpolating each label's one-hot mask and taking the argmax.

    Smoother and more faithful than nearest neighbour when the grid changes resolution (the
    boundaries do not staircase); the result has the input's dtype and only its label values.
    Labels are processed one at a time, so memory stays at two float volumes.

    Parameters
    ----------
    labels:
        ``[B, C, D, H, W]`` label maps: integer, or floating point holding label values.
    voxel_maps, out_shape, padding_mode:
        As in :func:`resample`; outside the input the result is 0.
    mode:
        ``"linear"`` or ``"cubic"`` for the one-hot masks.
    values:
        The label values; found with ``torch.unique`` (one device synchronisation) if None.
    sampler:
        Resamples one float mask ``[B, C, D, H, W]``; replaces ``resample(mask, voxel_maps, ...)``
        (e.g. to sample through a displacement field).

    Example
    -------
    >>> x = torch.zeros(1, 1, 4, 4, 4, dtype=torch.uint8); x[..., 1:3, 1:3, 1:3] = 5
    >>> resample_labels(x, np.eye(4), (4, 4, 4)).unique().tolist()
    [0, 5]
    """
    values = torch.unique(labels).tolist() if values is None else list(values)
    best_score = None
    best_label = torch.zeros((labels.shape[0], labels.shape[1], *out_shape), dtype=labels.dtype, device=labels.device)
    for value in values:
        mask = (labels == value).float()
        score = sampler(mask) if sampler else resample(mask, voxel_maps, out_shape, mode, padding_mode=padding_mode)
        if best_score is None:
            best_score = score
            best_label.fill_(value)
        else:
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_label = torch.where(better, torch.tensor(value, dtype=labels.dtype, device=labels.device),
                                     best_label)
    if best_score is not None:  # beyond the input no label has any weight: background
        best_label = torch.where(best_score > 0, best_label, torch.zeros((), dtype=labels.dtype, device=labels.device))
    return best_label
