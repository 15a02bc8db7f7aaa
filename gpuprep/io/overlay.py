"""Quality-control overlays: label maps drawn in colour over orthogonal slices of an image, as a PNG."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .atomic import atomic_path
from .montage import orthogonal_slices

_TILE = 200  # pixels per slice tile (longest side)
_LABEL_HEIGHT = 18
#: Colours of labels 1, 2, ... (label 0, background, is not drawn); cycled for more labels.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
], dtype=np.float32)


def save_overlay(
    path: str | Path,
    image: torch.Tensor,
    labels: torch.Tensor,
    affine: torch.Tensor,
    names: Mapping[str, str] | None = None,
    title: str = "segmentation",
    alpha: float = 0.45,
) -> Path:
    """Write a PNG: the image's three orthogonal slices, then the same with the labels in colour.

    Both volumes must be on the same grid (``affine``); they are shown in RAS orientation (see
    :func:`gpuprep.io.montage.orthogonal_slices`) with square millimetres, the image windowed to
    its 1st-99th percentile, each nonzero label in its own colour, and a legend.

    Parameters
    ----------
    path:
        Output ``.png`` (written atomically).
    image, labels:
        ``[C, D, H, W]`` or ``[D, H, W]`` tensors (first channel shown), any device.
    affine:
        Their voxel-to-world matrix.
    names:
        Label names by ``str(label)`` for the legend (e.g. a model spec's ``labels``).
    title:
        Caption of the overlay row.
    alpha:
        Opacity of the label colours, in ``[0, 1]``.

    Example
    -------
    >>> import tempfile, pathlib, torch
    >>> image, labels = torch.rand(1, 8, 8, 8), torch.zeros(1, 8, 8, 8, dtype=torch.uint8)
    >>> labels[:, 2:6, 2:6, 2:6] = 1
    >>> out = save_overlay(pathlib.Path(tempfile.mkdtemp()) / "qc.png", image, labels, torch.eye(4))
    >>> out.suffix
    '.png'
    """
    affine = torch.as_tensor(affine, dtype=torch.float64).cpu()
    gray = orthogonal_slices(image, affine)
    label_slices = orthogonal_slices(labels.to(torch.float32) if labels.dtype == torch.bool else labels, affine)
    window = _window(np.concatenate([s.ravel() for s, _ in gray]))
    plain, coloured = [], []
    for (pixels, size), (label_pixels, _) in zip(gray, label_slices):
        width, height = _tile_size(pixels.shape, size)
        grey = np.asarray(Image.fromarray(_scaled(pixels, window)).resize((width, height), Image.BILINEAR),
                          dtype=np.float32)
        index = np.rint(np.ascontiguousarray(label_pixels)).astype(np.int32)
        index = np.asarray(Image.fromarray(index).resize((width, height), Image.NEAREST))
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        plain.append(rgb.astype(np.uint8))
        inside = index > 0
        colour = PALETTE[(index[inside] - 1) % len(PALETTE)]
        rgb[inside] = (1 - alpha) * rgb[inside] + alpha * colour
        coloured.append(np.clip(rgb, 0, 255).astype(np.uint8))
    present = sorted(int(v) for v in torch.unique(labels).tolist() if v > 0)
    legend = "  ".join(f"{v}: {(names or {}).get(str(v), str(v))}" for v in present)
    canvas = _compose([("input", plain), (f"{title}  {legend}".strip(), coloured)])
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def _compose(rows: list[tuple[str, list[np.ndarray]]]) -> Image.Image:
    width = max(sum(t.shape[1] for t in tiles) for _, tiles in rows)
    height = sum(_LABEL_HEIGHT + max(t.shape[0] for t in tiles) for _, tiles in rows)
    canvas = Image.new("RGB", (max(width, 1), max(height, 1)), color=(0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    top = 0
    for title, tiles in rows:
        draw.text((4, top + 3), title, fill=(255, 255, 255))
        left = 0
        for tile in tiles:
            canvas.paste(Image.fromarray(tile, mode="RGB"), (left, top + _LABEL_HEIGHT))
            left += tile.shape[1]
        top += _LABEL_HEIGHT + max(t.shape[0] for t in tiles)
    return canvas


def _window(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    return tuple(np.percentile(finite, [1, 99])) if finite.size else (0.0, 1.0)


def _scaled(pixels: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.ascontiguousarray(np.clip((np.nan_to_num(pixels) - low) * scale, 0, 255).astype(np.uint8))


def _tile_size(shape: tuple[int, int], pixel_mm: tuple[float, float]) -> tuple[int, int]:
    height_mm, width_mm = shape[0] * pixel_mm[0], shape[1] * pixel_mm[1]
    factor = _TILE / max(height_mm, width_mm)
    return max(1, round(width_mm * factor)), max(1, round(height_mm * factor))
