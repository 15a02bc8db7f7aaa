"""A fast synthetic head phantom: nested jittered ellipsoids with T1-like intensities.

The phantom is meant for tests, examples and benchmarks that need a brain-like volume of any
size without touching the disk. It is built on the CPU from one ``torch.Generator`` seeded with
``seed`` and only then moved to ``device``, so a seed gives the same phantom, bit for bit, on every
device.

Geometry, in coordinates normalised to the field of view (``[-1, 1]`` along each axis, so the head
fills the volume whatever the spacing): a skull shell, a CSF layer, a grey-matter layer around
white matter, and two lateral ventricles (CSF) inside the white matter. Each ellipsoid's radii,
centre and tilt are jittered. Intensities are T1-like (WM > GM > CSF, skull dim), multiplied by a
smooth bias field and with a little noise added.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..sample import HISTORY_KEY, IMAGE, LABEL, make_meta
from .labels import BACKGROUND, CSF, GM, SKULL, WM

# (label, nominal radii, max relative radius jitter, max centre jitter, max tilt in radians);
# painted in order, each inside the previous, so later entries overwrite earlier ones.
_LAYERS = (
    (SKULL, (0.86, 0.90, 0.84), 0.03, 0.02, 0.10),
    (CSF, (0.78, 0.82, 0.76), 0.03, 0.02, 0.10),
    (GM, (0.72, 0.76, 0.70), 0.03, 0.02, 0.10),
    (WM, (0.52, 0.58, 0.50), 0.06, 0.03, 0.15),
)
# Two lateral ventricles (CSF) left and right of the midline, inside the white matter.
_VENTRICLES = (((-0.12, 0.05, 0.05), (0.06, 0.22, 0.09)), ((0.12, 0.05, 0.05), (0.06, 0.22, 0.09)))
# Mean T1-like intensity per label, and the jitter of each mean (keeps WM > GM > CSF).
_INTENSITY = {BACKGROUND: 0.0, CSF: 0.25, GM: 0.55, WM: 0.80, SKULL: 0.35}
_INTENSITY_JITTER = 0.04
_BIAS_STRENGTH = 0.10
_NOISE_STD = 0.02


def phantom(
    shape: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    device: Any = None,
) -> dict:
    """Make a synthetic head: a sample with a T1-like image, a tissue label map and a brain mask.

    Parameters
    ----------
    shape:
        Spatial shape ``(D, H, W)``: three integers, each at least 8.
    spacing:
        Voxel size in mm along ``D, H, W``: three positive finite numbers.
    seed:
        Non-negative integer seeding every random choice (geometry, intensities, bias, noise).
    device:
        Where the tensors go (``"cuda"``, a ``torch.device``...); CPU if None.

    Returns
    -------
    dict
        A sample: ``"image"`` float32 ``[1, D, H, W]``, ``"label"`` uint8 ``[1, D, H, W]`` with
        :data:`~gpuprep.data.labels.PHANTOM_LABELS` (0 background, 1 CSF, 2 GM, 3 WM, 4 skull),
        ``"brain_mask"`` uint8 0/1 (CSF, GM and WM), their ``*_meta`` (affine
        ``diag(*spacing, 1)`` shifted so that the centre of the volume is the world origin,
        RAS+ mm) and an empty ``"history"``.

    Raises
    ------
    ConfigError
        When an argument breaks the rules above.

    Example
    -------
    >>> s = phantom(shape=(32, 32, 32), spacing=(1.0, 1.0, 1.0), seed=3)
    >>> tuple(s["image"].shape), s["label"].dtype
    ((1, 32, 32, 32), torch.uint8)
    >>> sorted(s["label"].unique().tolist())
    [0, 1, 2, 3, 4]
    """
    shape = _check_shape(shape)
    spacing = _check_spacing(spacing)
    seed = _check_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    coords = _normalised_grid(shape)  # [3, D, H, W]
    label = torch.zeros(shape, dtype=torch.uint8)
    for value, radii, radius_jitter, centre_jitter, tilt in _LAYERS:
        radii_t = torch.tensor(radii, dtype=torch.float32) * (1 + _uniform(gen, 3, radius_jitter))
        inside = _inside_ellipsoid(coords, _uniform(gen, 3, centre_jitter), radii_t, _uniform(gen, 3, tilt))
        label = torch.where(inside, value, label)
    for centre, radii in _VENTRICLES:
        centre_t = torch.tensor(centre, dtype=torch.float32) + _uniform(gen, 3, 0.02)
        radii_t = torch.tensor(radii, dtype=torch.float32) * (1 + _uniform(gen, 3, 0.15))
        inside = _inside_ellipsoid(coords, centre_t, radii_t, _uniform(gen, 3, 0.15))
        label = torch.where(inside & (label == WM), CSF, label)

    means = torch.tensor([_INTENSITY[k] for k in range(len(_INTENSITY))], dtype=torch.float32)
    means[1:] += _uniform(gen, len(means) - 1, _INTENSITY_JITTER)
    image = means[label.long()] * _bias_field(coords, gen)
    image = (image + _NOISE_STD * torch.randn(shape, generator=gen)).abs()

    brain_mask = ((label == CSF) | (label == GM) | (label == WM)).to(torch.uint8)
    affine = _centred_affine(shape, spacing)
    sample: dict[str, Any] = {}
    for key, tensor in (("image", image), ("label", label), ("brain_mask", brain_mask)):
        sample[key] = tensor.unsqueeze(0).to(device) if device is not None else tensor.unsqueeze(0)
        kind = IMAGE if key == "image" else LABEL
        sample[f"{key}_meta"] = make_meta(affine, filename=None, spatial_shape=shape, kind=kind)
    sample[HISTORY_KEY] = []
    return sample


def _uniform(gen: torch.Generator, n: int, half_width: float) -> torch.Tensor:
    """``n`` values drawn uniformly from ``[-half_width, half_width]``."""
    return (torch.rand(n, generator=gen) * 2 - 1) * half_width


def _normalised_grid(shape: tuple[int, int, int]) -> torch.Tensor:
    """Voxel centres mapped to ``[-1, 1]`` along each axis, ``[3, D, H, W]``."""
    axes = [torch.linspace(-1.0, 1.0, n) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``Rz @ Ry @ Rx`` from three angles in radians."""
    cx, cy, cz = torch.cos(angles)
    sx, sy, sz = torch.sin(angles)
    one, zero = torch.ones(()), torch.zeros(())
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx]).reshape(3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy]).reshape(3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one]).reshape(3, 3)
    return rz @ ry @ rx


def _inside_ellipsoid(
    coords: torch.Tensor, centre: torch.Tensor, radii: torch.Tensor, angles: torch.Tensor
) -> torch.Tensor:
    """Boolean ``[D, H, W]``: which points of ``coords`` lie in the tilted ellipsoid."""
    to_unit = _rotation(angles).T / radii.view(3, 1)  # world -> unit-sphere coordinates
    local = torch.addmm(-(to_unit @ centre).view(3, 1), to_unit, coords.reshape(3, -1))
    return (local.square().sum(0) <= 1.0).reshape(coords.shape[1:])


def _bias_field(coords: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A smooth multiplicative field ``exp(linear + quadratic)``, between about 0.78 and 1.28."""
    linear = _uniform(gen, 3, 1.0).view(3, 1, 1, 1)
    quadratic = _uniform(gen, 3, 1.0).view(3, 1, 1, 1)
    log_field = (linear * coords + quadratic * (coords**2 - 1 / 3)).sum(0)
    return torch.exp(_BIAS_STRENGTH * log_field / 2)


def _centred_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> torch.Tensor:
    """``diag(spacing)`` with the translation that puts the volume's centre at world (0, 0, 0)."""
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    affine[:3, 3] = -torch.tensor(spacing, dtype=torch.float64) * (torch.tensor(shape) - 1) / 2
    return affine


def _three(value: Any) -> tuple[Any, Any, Any] | None:
    """``value`` as a 3-tuple when it is a non-string iterable of three items, else None."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        items = tuple(value)
    except TypeError:
        return None
    return items if len(items) == 3 else None


def _check_shape(shape: Any) -> tuple[int, int, int]:
    items = _three(shape)
    if items is None or not all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and int(n) >= 8 for n in items
    ):
        raise ConfigError(f"phantom: shape must be three integers, each >= 8, got {shape!r}")
    d, h, w = items
    return int(d), int(h), int(w)


def _check_spacing(spacing: Any) -> tuple[float, float, float]:
    items = _three(spacing)
    if items is None or not all(
        # "not s <= 0" is "s > 0" for a finite s; numbers.Real declares only < and <=
        isinstance(s, numbers.Real) and not isinstance(s, bool) and math.isfinite(s) and not s <= 0
        for s in items
    ):
        raise ConfigError(f"phantom: spacing must be three positive finite numbers (mm), got {spacing!r}")
    d, h, w = items
    return float(d), float(h), float(w)


def _check_seed(seed: Any) -> int:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= int(seed) < 2**63:
        raise ConfigError(f"phantom: seed must be a non-negative integer below 2**63, got {seed!r}")
    return int(seed)
