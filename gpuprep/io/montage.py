"""Quality-control montages: orthogonal slices of volumes, written as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..functional.orientation import apply_orientation, orientation_transform
from .atomic import atomic_path

_TILE = 160  # pixels per slice tile (longest side)


def orthogonal_slices(volume: torch.Tensor, affine: torch.Tensor) -> list[tuple[np.ndarray, tuple]]:
    """Return the sagittal, coronal and axial slices through the centre, as 2D display arrays.

    Each slice comes with its pixel size in mm ``(row, column)`` so it can be shown undistorted.

    The volume is first reoriented to RAS (exactly, no interpolation) so every image shows
    superior up and anterior/right the same way whatever the file's orientation.

    Parameters
    ----------
    volume:
        ``[C, D, H, W]`` or ``[D, H, W]`` tensor; the first channel is shown.
    affine:
        Its voxel-to-world matrix.
    """
    if volume.ndim == 4:
        volume = volume[0]
    ornt = orientation_transform(affine.numpy(), "RAS")
    ras = apply_orientation(volume, ornt).detach().float().cpu().numpy()
    spacing = np.linalg.norm(affine.numpy()[:3, :3], axis=0)[np.argsort(ornt[:, 0])]
    x, y, z = (s // 2 for s in ras.shape)
    sagittal = ras[x, :, :].T[::-1]  # rows: superior -> inferior, columns: posterior -> anterior
    coronal = ras[:, y, :].T[::-1]  # columns: left -> right
    axial = ras[:, :, z].T[::-1]  # rows: anterior -> posterior
    sx, sy, sz = spacing
    return [(sagittal, (sz, sy)), (coronal, (sz, sx)), (axial, (sy, sx))]


def save_montage(
    path: str | Path,
    rows: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
) -> Path:
    """Write a PNG with one row of three orthogonal slices per volume, each row labelled.

    Parameters
    ----------
    path:
        Output ``.png`` path (written atomically).
    rows:
        ``(title, volume, affine)`` triples, e.g. the image before and after preprocessing.
        Each row is windowed to its own 1st-99th percentile.

    Example
    -------
    >>> import tempfile, pathlib, torch
    >>> vol = torch.rand(1, 8, 8, 8)
    >>> out = save_montage(pathlib.Path(tempfile.mkdtemp()) / "qc.png", [("input", vol, torch.eye(4))])
    >>> out.suffix
    '.png'
    """
    tiles = []
    for _, volume, affine in rows:
        slices = orthogonal_slices(volume, affine)
        pixels = _windowed([s for s, _ in slices])
        tiles.append([_to_tile(p, size) for p, (_, size) in zip(pixels, slices)])
    label_height = 18
    width = sum(t.width for t in tiles[0]) if tiles else 0
    width = max([width, *(sum(t.width for t in r) for r in tiles)])
    height = sum(label_height + max(t.height for t in r) for r in tiles)
    canvas = Image.new("L", (width, height), color=0)
    draw = ImageDraw.Draw(canvas)
    top = 0
    for (title, _, _), row in zip(rows, tiles):
        draw.text((4, top + 3), title, fill=255)
        left = 0
        for tile in row:
            canvas.paste(tile, (left, top + label_height))
            left += tile.width
        top += label_height + max(t.height for t in row)
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


def _to_tile(pixels: np.ndarray, pixel_mm: tuple[float, float]) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="L")
    height_mm, width_mm = pixels.shape[0] * pixel_mm[0], pixels.shape[1] * pixel_mm[1]
    factor = _TILE / max(height_mm, width_mm)
    return image.resize((max(1, round(width_mm * factor)), max(1, round(height_mm * factor))))
