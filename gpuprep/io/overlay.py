"""Quality-control overlays: label maps drawn in colour over orthogonal slices of an image, as a PNG."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .atomic import atomic_path
from .montage import aligned_boxes, render_tile, slice_views
from .qc_annotations import MARKER_COLOUR, VIEWS, draw_markers, legend

_TILE = 200  # pixels per slice tile (longest side)
_LABEL_HEIGHT = 18
_GAP = 6  # pixels between views, so that the letters of neighbouring views stay apart
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
    """Write a PNG: the image's three orthogonal slices, then the same with the labels in colour, then a legend.

    Both volumes must be on the same grid (``affine``); they are shown in RAS orientation (see
    :func:`gpuprep.io.montage.slice_views`: the patient's left on the image's left) with square
    millimetres, the image windowed to its 1st-99th percentile and each nonzero label in its own
    colour (:func:`label_colours`). Every view carries its orientation letters (L/R on the
    coronal and axial views, A/P and S/I where they apply, in :data:`MARKER_COLOUR`); the legend
    below shows a swatch of each label's colour with its value and name (every named label, and
    any other label present).

    Parameters
    ----------
    path:
        Output ``.png`` (written atomically).
    image, labels:
        ``[C, D, H, W]`` or ``[D, H, W]`` tensors (first channel shown), any device.
    affine:
        Their voxel-to-world matrix.
    names:
        Label names by ``str(label)`` for the legend (e.g. a model spec's ``labels``); label 0
        (background) is never drawn nor listed.
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
    if labels.dtype == torch.bool:
        labels = labels.to(torch.uint8)
    gray = slice_views(image, affine)
    label_views = slice_views(labels, affine)
    sizes, (boxes,) = aligned_boxes([gray], _TILE)
    window = _window(np.concatenate([view.pixels.ravel() for view in gray]))
    plain, coloured = [], []
    for name, view, label_view, size, box in zip(VIEWS, gray, label_views, sizes, boxes):
        grey = np.asarray(render_tile(_scaled(view.pixels, window), size, box), dtype=np.float32)
        labels_tile = render_tile(np.rint(label_view.pixels).astype(np.int32), size, box, Image.Resampling.NEAREST)
        index = np.asarray(labels_tile)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        plain.append(_marked(rgb, name))
        inside = index > 0
        rgb[inside] = (1 - alpha) * rgb[inside] + alpha * label_colours(index[inside])
        coloured.append(_marked(rgb, name))
    present = {int(v) for v in torch.unique(labels).tolist() if v > 0}
    named = {int(k) for k in (names or {}) if str(k).lstrip("-").isdigit() and int(k) > 0}
    entries = [(tuple(label_colours(np.array([v]))[0].astype(int)), f"{v} {(names or {}).get(str(v), '')}".strip())
               for v in sorted(present | named)]
    canvas = _compose([("input", plain), (title, coloured)], entries)
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def label_colours(values: np.ndarray) -> np.ndarray:
    """The RGB colours (float32 ``[..., 3]``) of nonzero label ``values``: :data:`PALETTE`, cycled.

    Example
    -------
    >>> label_colours(np.array([1, 11])).tolist() == [PALETTE[0].tolist()] * 2
    True
    """
    return PALETTE[(np.asarray(values) - 1) % len(PALETTE)]


def _marked(rgb: np.ndarray, view: str) -> Image.Image:
    tile = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    draw_markers(tile, view, MARKER_COLOUR)
    return tile


def _compose(rows: list[tuple[str, list[Image.Image]]], entries: list[tuple[tuple[int, int, int], str]]) -> Image.Image:
    width = max(sum(t.width + _GAP for t in tiles) - _GAP for _, tiles in rows)
    key = legend(entries, width) if entries else None
    height = sum(_LABEL_HEIGHT + max(t.height for t in tiles) for _, tiles in rows) + (key.height if key else 0)
    canvas = Image.new("RGB", (max(width, 1), max(height, 1)), color=(0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    top = 0
    for title, tiles in rows:
        draw.text((4, top + 3), title, fill=(255, 255, 255))
        left = 0
        for tile in tiles:
            canvas.paste(tile, (left, top + _LABEL_HEIGHT))
            left += tile.width + _GAP
        top += _LABEL_HEIGHT + max(t.height for t in tiles)
    if key is not None:
        canvas.paste(key, (0, top))
    return canvas


def _window(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    return tuple(np.percentile(finite, [1, 99])) if finite.size else (0.0, 1.0)


def _scaled(pixels: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.ascontiguousarray(np.clip((np.nan_to_num(pixels) - low) * scale, 0, 255).astype(np.uint8))
