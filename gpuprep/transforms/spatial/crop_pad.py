"""Exact crops and pads (no interpolation): CropOrPad, CropForeground, PadToMultiple."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...errors import ConfigError
from ...functional.grid import translation_map
from ...records import make_step
from ...sample import meta_key
from ...validation import check_int_or_three
from ..fusion import current_grids
from .base import SpatialTransform
from .padding import validate_padding_mode, validate_padding_value
from .resample import _target_shape


class CropOrPad(SpatialTransform):
    """Crop and/or pad to a fixed shape around the centre, the foreground, or a mask.

    Where an axis has an odd surplus, the extra voxel is cropped (or padded) at the start, as in
    TorchIO's ``CropOrPad``. The affine is shifted so world positions are kept.

    Parameters
    ----------
    keys:
        Image keys.
    shape:
        Target spatial shape; ``None`` or -1 keeps an axis.
    center:
        ``"center"`` (the middle of the image), ``"foreground"`` (the centre of the bounding
        box of the non-zero voxels of the first key), or the name of a mask key whose bounding
        box centre is used. The last two read the data (one small device-to-host copy), so they
        are not fused with neighbouring spatial transforms.
    padding_value:
        What padded voxels of intensity images get: a number (default 0) or ``"minimum"`` (each
        sample's and channel's minimum: -1000 HU, air, for a CT). Label maps are padded with 0.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> ct = gp.make_sample({"ct": torch.full((1, 2, 2, 2), 40.0)})
    >>> gp.CropOrPad("ct", (4, 2, 2), padding_value=-1000)(ct)["ct"][0, :, 0, 0].tolist()
    [-1000.0, 40.0, 40.0, -1000.0]
    >>> gp.CropOrPad("image", (4, 8, 8))(gp.make_sample({"image": torch.rand(1, 6, 6, 6)}))["image"].shape
    torch.Size([1, 4, 8, 8])
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        shape: Sequence[int | None],
        center: str = "center",
        allow_missing_keys: bool = False,
        padding_value: float | str = 0.0,
    ):
        super().__init__(keys, allow_missing_keys)
        self.shape = _target_shape(shape, type(self).__name__)
        self.padding_value = validate_padding_value(padding_value, "CropOrPad")
        if not isinstance(center, str) or not center:
            raise ConfigError(f"CropOrPad: center must be 'center', 'foreground' or a mask key, got {center!r}")
        self.center = center

    @property
    def fusable(self) -> bool:  # type: ignore[override]
        return self.center == "center"

    def plan(self, grids, batch, keys):
        centers = None if self.center == "center" else _bbox_centers(batch, self.center, keys[0])
        size = grids[keys[0]][1].shape[0]
        params: list[dict] = [{} for _ in range(size)]
        for key in keys:
            shape, affines = grids[key]
            out_shape = tuple(n if t is None else t for n, t in zip(shape, self.shape))
            for index, param in enumerate(params):
                if centers is None:
                    offset = [_half_rounded_up(n - t) for n, t in zip(shape, out_shape)]
                else:
                    offset = [int(np.floor(c - (t - 1) / 2)) for c, t in zip(centers[index], out_shape)]
                param[key] = make_step(shape, affines[index], out_shape, translation_map(offset))
        return params


class CropForeground(SpatialTransform):
    """Crop to the bounding box of a source image's foreground, plus a margin (MONAI's semantics).

    Parameters
    ----------
    keys:
        Image keys to crop (all with the same grid as the source).
    source_key:
        The image (or mask) whose voxels above ``threshold`` define the foreground.
    margin:
        Voxels added on every side of the box (clipped to the image).
    threshold:
        Foreground is ``source > threshold`` in any channel.

    Notes
    -----
    An all-background source keeps the whole image. The box is read from the data (one small
    device-to-host copy), so this transform is not fused with others.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> x = torch.zeros(1, 8, 8, 8); x[0, 2:4, 3:6, 1:2] = 1
    >>> gp.CropForeground("image", source_key="image")(gp.make_sample({"image": x}))["image"].shape
    torch.Size([1, 2, 3, 1])
    """

    fusable = False

    def __init__(
        self,
        keys: str | Sequence[str],
        source_key: str,
        margin: int | Sequence[int] = 0,
        threshold: float = 0.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.margin = check_int_or_three("CropForeground", "margin", margin, minimum=0)
        self.source_key = source_key
        self.threshold = float(threshold)

    def plan(self, grids, batch, keys):
        boxes = _bounding_boxes(batch, self.source_key, self.threshold)
        params: list[dict] = [{} for _ in range(len(boxes))]
        for key in keys:
            shape, affines = grids[key]
            for index, (low, high) in enumerate(boxes):
                if low is None:
                    low, high = [0, 0, 0], list(shape)
                start = [max(0, lo - m) for lo, m in zip(low, self.margin)]
                stop = [min(n, hi + m) for hi, m, n in zip(high, self.margin, shape)]
                out_shape = tuple(b - a for a, b in zip(start, stop))
                params[index][key] = make_step(shape, affines[index], out_shape, translation_map(start))
        return params


class PadToMultiple(SpatialTransform):
    """Pad each spatial axis up to the next multiple of ``k`` (as a U-Net needs), centred.

    ``padding_mode="zeros"`` (default) pads intensity images with ``padding_value`` (a number,
    default 0, or ``"minimum"``: each sample's and channel's minimum) and label maps with 0;
    ``"border"`` repeats the edge voxels, so that an image whose background is not dark gets no
    dark frame a network could mistake for an edge.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> gp.PadToMultiple("image", 16)(gp.make_sample({"image": torch.rand(1, 30, 17, 16)}))["image"].shape
    torch.Size([1, 32, 32, 16])
    """

    def __init__(self, keys: str | Sequence[str], k: int | Sequence[int] = 16, allow_missing_keys: bool = False,
                 padding_mode: str = "zeros", padding_value: float | str = 0.0):
        super().__init__(keys, allow_missing_keys)
        self.k = check_int_or_three("PadToMultiple", "k", k, minimum=1)
        self.padding_mode = validate_padding_mode(padding_mode, "PadToMultiple")
        self.padding_value = validate_padding_value(padding_value, "PadToMultiple")

    def grid_step(self, key, shape, affine):
        out_shape = tuple(-(-n // m) * m for n, m in zip(shape, self.k))
        return out_shape, translation_map([-((t - n) // 2) for n, t in zip(shape, out_shape)])


def _half_rounded_up(surplus: int) -> int:
    """Crop (positive) or pad (negative) at the start: half the surplus, the odd voxel included."""
    return (surplus + 1) // 2 if surplus >= 0 else -((-surplus + 1) // 2)


def _bounding_boxes(batch, source_key: str, threshold: float) -> list[tuple]:
    """Per-sample ``(low, high)`` voxel bounds of ``source > threshold`` (high exclusive)."""
    if source_key not in batch:
        raise ConfigError(f"source key {source_key!r} is not in the sample; it has {sorted(map(str, batch))}")
    foreground = (batch[source_key] > threshold).any(dim=1)  # [B, D, H, W]
    # Three small per-axis profiles come to the host, not the volume.
    profiles = [foreground.any(dim=d).cpu() for d in ((2, 3), (1, 3), (1, 2))]
    boxes: list[tuple[list[int], list[int]] | tuple[None, None]] = []
    for index in range(foreground.shape[0]):
        hits = [torch.nonzero(p[index]).flatten() for p in profiles]
        if any(h.numel() == 0 for h in hits):
            boxes.append((None, None))
        else:
            boxes.append(([int(h[0]) for h in hits], [int(h[-1]) + 1 for h in hits]))
    return boxes


def _bbox_centers(batch, center: str, first_key: str) -> list[list[float]]:
    source = first_key if center == "foreground" else center
    if center != "foreground" and (source not in batch or meta_key(source) not in batch):
        raise ConfigError(f"CropOrPad: center must be 'center', 'foreground' or a mask key; {center!r} is not a key")
    shape = current_grids(batch, [source])[source][0]
    centers = []
    for low, high in _bounding_boxes(batch, source, 0.0):
        if low is None:
            centers.append([(n - 1) / 2 for n in shape])
        else:
            centers.append([(lo + hi - 1) / 2 for lo, hi in zip(low, high)])
    return centers
