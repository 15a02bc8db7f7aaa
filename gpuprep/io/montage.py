"""Quality-control montages: orthogonal slices of volumes through one world point, written as a PNG.

Every row of a montage (e.g. an image before and after preprocessing) is cut through the same
world point and drawn at the same scale (pixels per millimetre), placed so that this point falls
on the same pixel in every row: the rows show the same anatomy even when the preprocessing
cropped, padded, resampled or reoriented the grid. A row whose grid does not contain the point
shows its nearest slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nibabel import orientations as nio
from PIL import Image, ImageDraw

from ..functional.orientation import apply_orientation, orientation_transform
from .atomic import atomic_path
from .qc_annotations import VIEWS, draw_markers

_TILE = 160  # pixels of the longest side of the largest view
_LABEL_HEIGHT = 18
_GAP = 6  # pixels between views, so that the letters of neighbouring views stay apart


@dataclass
class SliceView:
    """One 2D slice for display: its pixels, their size in mm, and where the slicing point lies on it.

    ``point_mm`` is the point's distance in mm from the slice's top-left corner (row, column),
    measured from the corner of the first pixel (so it may fall outside the slice).
    """

    pixels: np.ndarray
    pixel_mm: tuple[float, float]
    point_mm: tuple[float, float]


def field_of_view_centre(volume: torch.Tensor, affine: torch.Tensor) -> np.ndarray:
    """World coordinates (mm) of the centre of ``volume``'s grid.

    Example
    -------
    >>> field_of_view_centre(torch.zeros(1, 5, 5, 3), torch.eye(4)).tolist()
    [2.0, 2.0, 1.0]
    """
    shape = np.array(volume.shape[-3:], dtype=np.float64)
    return (np.asarray(affine, dtype=np.float64) @ np.append((shape - 1) / 2, 1.0))[:3]


def slice_views(volume: torch.Tensor, affine: torch.Tensor,
                point: Sequence[float] | np.ndarray | None = None) -> list[SliceView]:
    """Return the sagittal, coronal and axial :class:`SliceView` through a world point.

    The volume is first reoriented to RAS (exactly, no interpolation) so every view shows
    superior up, anterior up in the axial view and the patient's left on the left.

    Parameters
    ----------
    volume:
        ``[C, D, H, W]`` or ``[D, H, W]`` tensor; the first channel is shown.
    affine:
        Its voxel-to-world matrix.
    point:
        World point (RAS mm) the three planes go through; each plane is the nearest voxel
        plane, clamped to the grid. Default: the grid's middle voxel.
    """
    if volume.ndim == 4:
        volume = volume[0]
    affine = torch.as_tensor(affine, dtype=torch.float64).cpu()
    ornt = orientation_transform(affine.numpy(), "RAS")
    ras = apply_orientation(volume, ornt).detach().float().cpu().numpy()
    ras_affine = affine.numpy() @ nio.inv_ornt_aff(ornt, volume.shape)  # RAS voxel -> input voxel -> world
    spacing = np.linalg.norm(ras_affine[:3, :3], axis=0)
    nx, ny, nz = ras.shape
    if point is None:
        index = np.array([nx // 2, ny // 2, nz // 2], dtype=np.float64)
    else:
        index = (np.linalg.inv(ras_affine) @ np.append(np.asarray(point, dtype=np.float64), 1.0))[:3]
    x, y, z = (int(np.clip(np.rint(i), 0, n - 1)) for i, n in zip(index, ras.shape))
    ix, iy, iz = index
    sx, sy, sz = spacing
    # Rows go superior -> inferior (or anterior -> posterior), hence the flips and the n - 1 - i.
    return [
        SliceView(ras[x, :, :].T[::-1], (sz, sy), ((nz - 0.5 - iz) * sz, (iy + 0.5) * sy)),  # columns P -> A
        SliceView(ras[:, y, :].T[::-1], (sz, sx), ((nz - 0.5 - iz) * sz, (ix + 0.5) * sx)),  # columns L -> R
        SliceView(ras[:, :, z].T[::-1], (sy, sx), ((ny - 0.5 - iy) * sy, (ix + 0.5) * sx)),  # rows A -> P
    ]


def orthogonal_slices(volume: torch.Tensor, affine: torch.Tensor,
                      point: Sequence[float] | None = None) -> list[tuple[np.ndarray, tuple]]:
    """Return the sagittal, coronal and axial slices through ``point`` (default: the centre), as 2D arrays.

    Each slice comes with its pixel size in mm ``(row, column)`` so it can be shown undistorted;
    see :func:`slice_views` for the orientation and the ``point``.

    Example
    -------
    >>> [pixels.shape for pixels, _ in orthogonal_slices(torch.rand(1, 4, 5, 6), torch.eye(4))]
    [(6, 5), (6, 4), (5, 4)]
    """
    return [(view.pixels, view.pixel_mm) for view in slice_views(volume, affine, point)]


def aligned_boxes(rows: Sequence[Sequence[SliceView]], tile: int = _TILE) -> tuple[list[tuple[int, int]], list]:
    """Lay out views of several grids so that their slicing point falls on the same pixel in every row.

    All views share one scale: the largest view's longest side gets ``tile`` pixels.

    Parameters
    ----------
    rows:
        One list of views (sagittal, coronal, axial) per grid, all cut through one world point.
    tile:
        Pixels of the longest side of the largest view.

    Returns
    -------
    sizes, boxes
        The ``(width, height)`` of each view's tile (the same in every row) and, per row and view,
        the ``(left, top, width, height)`` box of the slice inside its tile.
    """
    frames = []
    for column in zip(*rows):
        top = max(view.point_mm[0] for view in column)
        left = max(view.point_mm[1] for view in column)
        bottom = max(view.pixels.shape[0] * view.pixel_mm[0] - view.point_mm[0] for view in column)
        right = max(view.pixels.shape[1] * view.pixel_mm[1] - view.point_mm[1] for view in column)
        frames.append((top, left, top + bottom, left + right))
    scale = tile / max(max(height, width) for _, _, height, width in frames)
    sizes = [(max(1, round(width * scale)), max(1, round(height * scale))) for _, _, height, width in frames]
    boxes = []
    for row in rows:
        boxes.append([
            (round((left - view.point_mm[1]) * scale), round((top - view.point_mm[0]) * scale),
             max(1, round(view.pixels.shape[1] * view.pixel_mm[1] * scale)),
             max(1, round(view.pixels.shape[0] * view.pixel_mm[0] * scale)))
            for view, (top, left, _, _) in zip(row, frames)
        ])
    return sizes, boxes


def render_tile(pixels: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int],
                resample: int = Image.Resampling.BILINEAR) -> Image.Image:
    """Draw ``pixels`` (uint8 grey or int32 labels) resized into ``box`` on a black tile of ``size``."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    canvas = Image.new(image.mode, size, color=0)
    canvas.paste(image.resize(box[2:], resample), box[:2])
    return canvas


def save_montage(
    path: str | Path,
    rows: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
    point: Sequence[float] | np.ndarray | None = None,
) -> Path:
    """Write a PNG with one row of three orthogonal slices per volume, each row labelled.

    Every row is cut through the same world ``point`` and drawn at the same mm scale, with the
    point on the same pixel in every row (see the module docstring), and each view carries its
    orientation letters (L/R, A/P, S/I).

    Parameters
    ----------
    path:
        Output ``.png`` path (written atomically).
    rows:
        ``(title, volume, affine)`` triples, e.g. the image before and after preprocessing.
        Each row is windowed to its own 1st-99th percentile.
    point:
        World point (RAS mm) shown in every row; default: the centre of the first row's grid.

    Example
    -------
    >>> import tempfile, pathlib, torch
    >>> vol = torch.rand(1, 8, 8, 8)
    >>> out = save_montage(pathlib.Path(tempfile.mkdtemp()) / "qc.png", [("input", vol, torch.eye(4))])
    >>> out.suffix
    '.png'
    """
    if point is None and rows:
        point = field_of_view_centre(rows[0][1], torch.as_tensor(rows[0][2], dtype=torch.float64).cpu())
    views = [slice_views(volume, affine, point) for _, volume, affine in rows]
    sizes, boxes = aligned_boxes(views) if views else ([], [])
    width = sum(w for w, _ in sizes) + _GAP * (len(sizes) - 1)
    height = len(rows) * (_LABEL_HEIGHT + max([h for _, h in sizes], default=0))
    canvas = Image.new("L", (max(1, width), max(1, height)), color=0)
    draw = ImageDraw.Draw(canvas)
    top = 0
    for (title, _, _), row, row_boxes in zip(rows, views, boxes):
        draw.text((4, top + 3), title, fill=255)
        left = 0
        pixels = _windowed([view.pixels for view in row])
        for name, grey, size, box in zip(VIEWS, pixels, sizes, row_boxes):
            tile = render_tile(grey, size, box)
            draw_markers(tile, name, 255)
            canvas.paste(tile, (left, top + _LABEL_HEIGHT))
            left += size[0] + _GAP
        top += _LABEL_HEIGHT + max(h for _, h in sizes)
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def _windowed(slices: list[np.ndarray]) -> list[np.ndarray]:
    values = np.concatenate([s.ravel() for s in slices])
    finite = values[np.isfinite(values)]
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    scale = 255.0 / (high - low) if high > low else 0.0
    return [np.clip((np.nan_to_num(s) - low) * scale, 0, 255).astype(np.uint8) for s in slices]
