"""Synthetic head label maps: a brain tissue map wrapped in extracerebral CSF, skull and scalp.

SynthSeg/SynthStrip-style training turns label maps into random-contrast images on the fly
(:class:`~gpuprep.transforms.augment.synth.RandLabelsToImage`). The only anatomy available offline
is the MNI152 tissue map (:func:`gpuprep.data.sample_brain`, 2 mm, or nilearn's 1 mm template),
which is skull-stripped, so a brain-mask model needs heads synthesised around it:
:func:`synthetic_head` pads the grid and builds shells at Euclidean distances (in mm) from the
brain, with thicknesses that vary smoothly over the head and from one seed to the next.

Brain mask convention: the brain is labels 1 to 3 (CSF, GM, WM of the tissue map, the CSF being
the sulcal and ventricular CSF inside the template's brain mask), exactly the template's brain
mask (``brain_mask == (label > 0)`` for the bundled sample brain). Extracerebral CSF (label 4),
skull and scalp are outside it. Note that the skull is label 5 here, unlike the phantom's
:data:`~gpuprep.data.labels.PHANTOM_LABELS` (4).

Everything is torch (no scipy): the distance is an exact separable squared Euclidean distance
transform, truncated at the outer edge of the scalp (beyond which nothing is painted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import MappingProxyType

import numpy as np
import torch

from ..data.labels import BACKGROUND, BRAIN_LABELS, CSF, GM, WM
from ..errors import ConfigError, TransformError
from ..functional.distance import distance_to_mask

EXTRACEREBRAL_CSF = 4
SKULL = 5
SCALP = 6

#: Labels of a synthetic head: the tissue labels plus three shells around the brain.
HEAD_LABELS = MappingProxyType({
    BACKGROUND: "background",
    CSF: "csf",
    GM: "gm",
    WM: "wm",
    EXTRACEREBRAL_CSF: "extracerebral_csf",
    SKULL: "skull",
    SCALP: "scalp",
})

#: Default thickness ranges (mm) of the shells, inside out.
SHELLS = (("csf_mm", EXTRACEREBRAL_CSF, (1.0, 4.0)), ("skull_mm", SKULL, (4.0, 8.0)), ("scalp_mm", SCALP, (3.0, 8.0)))

__all__ = ["EXTRACEREBRAL_CSF", "HEAD_LABELS", "SCALP", "SKULL", "brain_mask_of", "distance_to_mask",
           "synthetic_head"]


def brain_mask_of(labels: torch.Tensor) -> torch.Tensor:
    """The brain mask (uint8 0/1) of a tissue or head label map: labels 1 to 3 (CSF, GM, WM).

    Parameters
    ----------
    labels:
        Integer label map of any shape (:data:`HEAD_LABELS` or tissue labels).

    Example
    -------
    >>> brain_mask_of(torch.tensor([0, 1, 2, 3, 4, 5, 6])).tolist()
    [0, 1, 1, 1, 0, 0, 0]
    """
    low, high = min(BRAIN_LABELS), max(BRAIN_LABELS)
    return ((labels >= low) & (labels <= high)).to(torch.uint8)


def _smooth_field(shape: Sequence[int], extent_mm: Sequence[float], control_mm: float,
                  generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A smooth random field ``[D, H, W]`` (standard normal control points every ``control_mm``)."""
    grid = [max(2, math.ceil(e / control_mm) + 1) for e in extent_mm]
    control = torch.randn((1, 1, *grid), generator=generator, dtype=torch.float32).to(device)
    field = torch.nn.functional.interpolate(control, size=tuple(shape), mode="trilinear", align_corners=True)
    return field[0, 0]


def _check_range(value, name: str) -> tuple[float, float]:
    ok = (isinstance(value, Sequence) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
          and 0 < value[0] <= value[1])
    if not ok:
        raise ConfigError(f"synthetic_head: {name} must be a pair (low, high) of mm with 0 < low <= high, "
                          f"got {value!r}")
    return float(value[0]), float(value[1])


def synthetic_head(
    tissue: torch.Tensor,
    affine: np.ndarray,
    seed: int,
    margin_mm: float = 25.0,
    csf_mm: Sequence[float] = (1.0, 4.0),
    skull_mm: Sequence[float] = (4.0, 8.0),
    scalp_mm: Sequence[float] = (3.0, 8.0),
    irregularity: float = 0.35,
    control_mm: float = 40.0,
) -> tuple[torch.Tensor, np.ndarray]:
    """Wrap a tissue label map in extracerebral CSF, skull and scalp: a synthetic head.

    The grid is padded by ``margin_mm`` on every side (rounded up to whole voxels; the affine is
    shifted so that every voxel keeps its world position). Let ``d`` be the Euclidean distance (mm)
    of a voxel to the brain (labels 1-3, see :func:`brain_mask_of`). Each shell ``k`` has a local
    thickness ``t_k(x) = low_k + (high_k - low_k) * clamp(c_k + irregularity * f_k(x), 0, 1)``
    with ``c_k ~ U(0, 1)`` drawn per seed and ``f_k`` a smooth standard-normal random field
    (control points every ``control_mm``, trilinearly upsampled); voxels with
    ``0 < d <= t_1`` are extracerebral CSF, ``t_1 < d <= t_1 + t_2`` skull and
    ``t_1 + t_2 < d <= t_1 + t_2 + t_3`` scalp, the rest stays background. So the shells nest and
    every thickness stays within its range. A thickness is raised to the grid's largest spacing
    where it is thinner (when that is within its range, e.g. CSF at 2 mm), so each shell closes on
    the grid: no voxel of a shell touches (6-neighbours) the layer beyond the next one.

    Parameters
    ----------
    tissue:
        Integer label map ``[1, D, H, W]`` (0 background, 1 CSF, 2 GM, 3 WM); any device.
    affine:
        Its voxel-to-world matrix ``[4, 4]`` (RAS+ mm); the spacing is the norm of its columns.
    seed:
        Non-negative integer; the same seed gives the same head.
    margin_mm:
        Padding added on every side (mm); at least the largest total thickness keeps the head
        inside the grid.
    csf_mm, skull_mm, scalp_mm:
        Thickness ranges ``(low, high)`` in mm of the extracerebral CSF, the skull and the scalp.
    irregularity:
        Amplitude (0 to 1) of the smooth variation of each thickness over the head.
    control_mm:
        Spacing of the random fields' control points (mm): larger is smoother.

    Returns
    -------
    tuple
        ``labels``: uint8 ``[1, D', H', W']`` with :data:`HEAD_LABELS`, on ``tissue``'s device;
        ``affine``: float64 ``[4, 4]`` numpy array of the padded grid.

    Example
    -------
    >>> import gpuprep as gp
    >>> s = gp.data.sample_brain()
    >>> head, head_affine = synthetic_head(s["label"], gp.get_affine(s, "label").numpy(), seed=0)
    >>> tuple(head.shape), head_affine[:3, 3].tolist()
    ((1, 125, 143, 121), [-124.0, -160.0, -98.0])
    >>> sorted(head.unique().tolist())
    [0, 1, 2, 3, 4, 5, 6]
    """
    if not isinstance(tissue, torch.Tensor) or tissue.ndim != 4 or tissue.shape[0] != 1:
        shape = tuple(tissue.shape) if isinstance(tissue, torch.Tensor) else type(tissue).__name__
        raise TransformError(f"synthetic_head: tissue must be a label map [1, D, H, W], got {shape}")
    if tissue.is_floating_point():
        raise TransformError(f"synthetic_head: tissue must be an integer label map, got dtype {tissue.dtype}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ConfigError(f"synthetic_head: affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"synthetic_head: seed must be a non-negative integer, got {seed!r}")
    if not isinstance(margin_mm, (int, float)) or isinstance(margin_mm, bool) or not 0 <= margin_mm < math.inf:
        raise ConfigError(f"synthetic_head: margin_mm must be a finite number >= 0, got {margin_mm!r}")
    ranges = [_check_range(value, name) for value, name in
              ((csf_mm, "csf_mm"), (skull_mm, "skull_mm"), (scalp_mm, "scalp_mm"))]
    if not isinstance(irregularity, (int, float)) or isinstance(irregularity, bool) or not 0 <= irregularity <= 1:
        raise ConfigError(f"synthetic_head: irregularity must be a number in [0, 1], got {irregularity!r}")
    if not isinstance(control_mm, (int, float)) or isinstance(control_mm, bool) or not 0 < control_mm < math.inf:
        raise ConfigError(f"synthetic_head: control_mm must be a positive finite number, got {control_mm!r}")

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not (spacing > 0).all():
        raise ConfigError(f"synthetic_head: affine has a zero-length voxel axis, spacing {spacing.tolist()}")
    pad = [math.ceil(float(margin_mm / s) - 1e-9) for s in spacing]
    padded = torch.nn.functional.pad(tissue, [p for p in reversed(pad) for _ in range(2)])
    out_affine = affine.copy()
    out_affine[:3, 3] = affine[:3, :3] @ -np.asarray(pad, dtype=np.float64) + affine[:3, 3]

    shape = padded.shape[1:]
    device = padded.device
    generator = torch.Generator().manual_seed(seed)
    extent = [n * s for n, s in zip(shape, spacing)]
    finest = float(spacing.max())
    outer = torch.zeros(shape, dtype=torch.float32, device=device)
    bounds = []
    for low, high in ranges:
        centre = torch.rand((), generator=generator).item()
        field = _smooth_field(shape, extent, control_mm, generator, device)
        fraction = (field * irregularity + centre).clamp_(0.0, 1.0)
        thickness = (fraction * (high - low) + low).clamp_(min=min(finest, high))
        outer = outer + thickness
        bounds.append(outer)

    brain = brain_mask_of(padded[0]).bool()
    distance = distance_to_mask(brain, spacing.tolist(), max_mm=sum(high for _, high in ranges))
    labels = padded[0].to(torch.uint8)
    outside = ~brain
    # Outermost first, so that each inner shell overwrites the outer ones it lies within.
    for (_, value, _), bound in reversed(list(zip(SHELLS, bounds))):
        labels = torch.where(outside & (distance <= bound), torch.tensor(value, dtype=torch.uint8, device=device),
                             labels)
    return labels[None], out_affine
