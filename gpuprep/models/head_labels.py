"""Whole-head label maps from real head scans: the brain in three tissues, the rest in many classes.

SynthStrip (Hoopes et al. 2022) trains its skull stripper on label maps of whole heads whose
non-brain tissue is split into many classes (scalp, fat, muscle, skull, marrow, eyes, neck,
air), each painted with a random intensity. A network that has seen those shapes, with every
contrast between them, learns where the brain ends rather than which intensity it has.
:func:`whole_head_labels` builds such a map from one real head scan and its brain mask:

- the brain mask is split into CSF, GM and WM (labels 1-3, :data:`~gpuprep.data.labels.CSF` ...)
  by 1-D k-means on the intensities inside it, darkest first (a T1 contrast);
- the head (Otsu foreground of the scan, holes filled, largest component) minus the brain is
  split into ``intensity_classes`` clusters by k-means on its intensities, and each cluster
  again by distance to the brain (near: meninges, skull, scalp; far: face, eyes, muscles, neck),
  giving labels ``4 .. 3 + 2 * intensity_classes``;
- the rest is background (0).

The class boundaries follow the scan's own anatomy, so the neck, face, orbits and skull base
are where a real head has them; which intensity each class has is drawn at training time.

Example
-------
>>> import torch
>>> image = torch.zeros(1, 40, 40, 40)
>>> image[:, 2:38, 2:38, 2:38] = 0.3               # far from the brain: neck, face
>>> image[:, 10:30, 10:30, 10:30] = 0.6            # near it: skull, scalp
>>> brain = torch.zeros_like(image, dtype=torch.bool)
>>> brain[:, 16:24, 16:24, 16:24] = True
>>> image[brain] = torch.tensor([0.8, 0.9, 1.0]).repeat_interleave(171)[:512]  # CSF, GM, WM
>>> labels = whole_head_labels(image, brain, spacing=(1, 1, 1), intensity_classes=2, near_mm=5)
>>> sorted(labels.unique().tolist())  # 4 (dark and near) is absent: the dark layer lies beyond 5 mm
[0, 1, 2, 3, 5, 6, 7]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.labels import BRAIN_LABELS
from ..errors import TransformError
from ..functional.distance import distance_to_mask
from ..functional.morphology import fill_holes, largest_component
from ..functional.threshold import otsu_threshold

__all__ = ["FIRST_NON_BRAIN_LABEL", "kmeans_1d", "whole_head_labels"]

#: The lowest label of the non-brain classes (1-3 are the brain's tissues).
FIRST_NON_BRAIN_LABEL = max(BRAIN_LABELS) + 1


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = 50) -> torch.Tensor:
    """Sorted cluster centres (``[k]``) of 1-D values by Lloyd's k-means, started at quantiles.

    Deterministic: the centres start at the ``(i + 0.5) / k`` quantiles and move to their
    clusters' means until nothing changes or ``iterations`` is reached. A cluster left empty
    keeps its centre.

    Parameters
    ----------
    values:
        1-D float tensor (at least ``k`` values).
    k:
        Number of clusters, at least 1.
    iterations:
        Upper bound on Lloyd iterations.

    Example
    -------
    >>> [round(c, 3) for c in kmeans_1d(torch.tensor([0.0, 0.1, 0.2, 5.0, 5.1, 5.2]), 2).tolist()]
    [0.1, 5.1]
    """
    if values.ndim != 1 or values.numel() < k or k < 1:
        raise TransformError(f"kmeans_1d: needs a 1-D tensor of at least k={k} values, got shape "
                             f"{tuple(values.shape)}")
    values = values.float()
    quantiles = (torch.arange(k, dtype=torch.float32, device=values.device) + 0.5) / k
    sample = values if values.numel() <= 1_000_000 else values[:: values.numel() // 1_000_000 + 1]
    centres = torch.quantile(sample, quantiles)
    for _ in range(iterations):
        assignment = (values[:, None] - centres[None]).abs().argmin(1)
        sums = torch.zeros(k, device=values.device).index_add_(0, assignment, values)
        counts = torch.bincount(assignment, minlength=k).float()
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        if torch.equal(updated, centres):
            break
        centres = updated
    return centres.sort().values


def _assign(values: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre for every value."""
    return (values[..., None] - centres).abs().argmin(-1)


def whole_head_labels(image: torch.Tensor, brain_mask: torch.Tensor, spacing: Sequence[float],
                      intensity_classes: int = 6, near_mm: float = 15.0) -> torch.Tensor:
    """A whole-head label map (uint8 ``[1, D, H, W]``) from a head scan and its brain mask.

    See the module docstring for the classes. ``image`` is ``[1, D, H, W]`` (a T1: the brain's
    tissues are numbered dark to bright, CSF, GM, WM), ``brain_mask`` a boolean or 0/1 tensor of
    the same shape, ``spacing`` the voxel size (mm) used for the near/far split at ``near_mm``.
    """
    if image.ndim != 4 or image.shape[0] != 1 or brain_mask.shape != image.shape:
        raise TransformError(f"whole_head_labels: image and brain_mask must both be [1, D, H, W], got "
                             f"{tuple(image.shape)} and {tuple(brain_mask.shape)}")
    if intensity_classes < 1:
        raise TransformError(f"whole_head_labels: intensity_classes must be >= 1, got {intensity_classes}")
    image = image.float()
    brain = brain_mask.bool()
    if not brain.any():
        raise TransformError("whole_head_labels: the brain mask is empty")
    threshold = otsu_threshold(image[None])[0]
    head = fill_holes(largest_component(image[0] > threshold * 0.5))[None] | brain
    labels = torch.zeros(image.shape, dtype=torch.uint8, device=image.device)

    tissue_centres = kmeans_1d(image[brain], len(BRAIN_LABELS))
    labels[brain] = (_assign(image[brain], tissue_centres) + min(BRAIN_LABELS)).to(torch.uint8)

    outside = head & ~brain
    if outside.any():
        centres = kmeans_1d(image[outside], min(intensity_classes, int(outside.sum())))
        cluster = _assign(image[outside], centres)
        distance = distance_to_mask(brain[0], list(spacing), max_mm=near_mm + 1.0)[None]
        far = (distance[outside] > near_mm).long()
        labels[outside] = (FIRST_NON_BRAIN_LABEL + cluster * 2 + far).to(torch.uint8)
    return labels
