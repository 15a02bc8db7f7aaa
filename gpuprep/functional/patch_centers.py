"""Where random patches go: centres drawn from a label map or a weight map, and the corners that fit.

Pure tensor math for :class:`gpuprep.RandPatches`, on the data's device (no host synchronisation):
the uniform numbers ``draws`` come from the caller's seeded streams, so the same draws give the
same patches on any device. Each function returns ``[B, N, 8]`` rows: the patch's start corner
(3), its centre (3), the class drawn and whether one was found.

Example
-------
>>> import torch
>>> label = torch.zeros(1, 1, 8, 8, 8, dtype=torch.uint8)
>>> label[0, 0, 5, 5, 5] = 1
>>> rows = label_centers(label, torch.tensor([[[0.9, 0.0]]]), [0.0, 1.0], False, (4, 4, 4), "label")
>>> rows[0, 0, 3:6].tolist(), rows[0, 0, :3].tolist()
([5, 5, 5], [3, 3, 3])
"""

from __future__ import annotations

import torch

from ..errors import TransformError


def patch_starts(centers: torch.Tensor, size, shape) -> torch.Tensor:
    """Corners ``[..., 3]`` of patches centred (``centre - size // 2``) and clamped to fit; fixed where padded."""
    columns = []
    for axis, (s, n) in enumerate(zip(size, shape)):
        if n >= s:
            columns.append((centers[..., axis] - s // 2).clamp(0, n - s))
        else:
            columns.append(torch.full_like(centers[..., axis], -((s - n) // 2)))
    return torch.stack(columns, -1)


def unravel(flat: torch.Tensor, shape) -> torch.Tensor:
    """Flat C-order voxel indices ``[...]`` as ``[..., 3]`` (i, j, k) on a grid of ``shape``."""
    _, h, w = shape
    return torch.stack([flat // (h * w), (flat // w) % h, flat % w], -1)


def label_centers(label: torch.Tensor, draws: torch.Tensor, ratios: list[float], pos_neg: bool, size,
                   name: str) -> torch.Tensor:
    """``[B, N, 8]``: start, centre, class and a found flag of each patch, from a label map ``[B, C, ...]``.

    ``draws[..., 0]`` picks the class (by cumulative ratio among the classes present),
    ``draws[..., 1]`` the rank of the voxel among that class's voxels (C order).
    """
    shape = tuple(label.shape[-3:])
    device = label.device
    draws = draws.to(device)
    classes = len(ratios)
    if pos_neg:  # classes [background, foreground]: one cumulative count serves both
        foreground = (label > 0).any(1).flatten(1).to(torch.int32).cumsum(1, dtype=torch.int32)
        positions = torch.arange(1, foreground.shape[1] + 1, dtype=torch.int32, device=device)

        def ranks(c):  # [B, V]: how many voxels of class c up to each voxel (C order)
            return foreground if c == 1 else positions - foreground

        counts = torch.cat([foreground.shape[1] - foreground[:, -1:], foreground[:, -1:]], 1).long()
    else:
        if label.shape[1] == 1:
            def mask(c):
                return label[:, 0].flatten(1) == c
        elif label.shape[1] == classes:
            def mask(c):
                return label[:, c].flatten(1) > 0
        else:
            raise TransformError(f"RandPatches: label_key {name!r} has {label.shape[1]} channels; class_ratios "
                                 f"give {classes} classes (use one channel of class indices, or one per class)")

        def ranks(c):
            return mask(c).to(torch.int32).cumsum(1, dtype=torch.int32)

        counts = torch.stack([mask(c).sum(1) for c in range(classes)], 1)  # [B, K]
    weights = torch.tensor(ratios, dtype=torch.float64, device=device)[None] * (counts > 0)
    cumulative = weights.cumsum(1)
    total = cumulative[:, -1:]
    chosen = torch.searchsorted(cumulative, (draws[..., 0] * total).contiguous(), right=True).clamp_max(classes - 1)
    flat = torch.zeros_like(chosen)
    for c in range(classes):
        cumulative_count = ranks(c)
        count = counts[:, c:c + 1]
        rank = torch.minimum((draws[..., 1] * count.to(torch.float64)).floor().long(), (count - 1).clamp_min(0))
        index = torch.searchsorted(cumulative_count, (rank + 1).to(torch.int32).contiguous())
        flat = torch.where(chosen == c, index.clamp_max(cumulative_count.shape[1] - 1), flat)
    centers = unravel(flat, shape)
    found = (total > 0).expand_as(chosen)
    return torch.cat([patch_starts(centers, size, shape), centers, chosen[..., None], found[..., None].long()], -1)


def weighted_centers(weight: torch.Tensor, draws: torch.Tensor, size, name: str) -> torch.Tensor:
    """``[B, N, 8]``: start, centre (class 0, found 1) of each patch, drawn proportionally to ``weight``."""
    if weight.shape[1] != 1:
        raise TransformError(f"RandPatches: weight_key {name!r} must have one channel, got {weight.shape[1]}")
    shape = tuple(weight.shape[-3:])
    low = [s // 2 if n >= s else 0 for s, n in zip(size, shape)]
    high = [n - s + s // 2 + 1 if n >= s else n for s, n in zip(size, shape)]
    region = weight[:, 0, low[0]:high[0], low[1]:high[1], low[2]:high[2]]
    values = torch.nan_to_num(region.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0).flatten(1)
    cumulative = values.cumsum(1)
    total = cumulative[:, -1:]
    draws = draws.to(weight.device)
    count = values.shape[1]
    weighted = torch.searchsorted(cumulative, (draws * total).contiguous(), right=True).clamp_max(count - 1)
    uniform = (draws * count).floor().long().clamp_max(count - 1)
    flat = torch.where(total > 0, weighted, uniform)
    offset = torch.tensor(low, device=weight.device)
    centers = unravel(flat, region.shape[-3:]) + offset
    zeros = torch.zeros_like(flat)[..., None]
    return torch.cat([patch_starts(centers, size, shape), centers, zeros, zeros + 1], -1)
