"""Skull stripping with the bundled brain-mask U-Net as a dictionary transform: :class:`SkullStrip`.

It shares the model handling, the network's private preprocessing and the mapping back onto the
image's grid with :class:`~gpuprep.models.inference.SegmentBrain` (see
:mod:`gpuprep.models.inference`); what is its own is the clean-up of the mask (largest component,
holes filled, on the device) and the masking of the images.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import torch

from ..data.sliding_window import ProgressCallback
from ..errors import ConfigError, TransformError
from ..functional.morphology import bounding_box, fill_holes, largest_component
from ..sample import LABEL, copy_meta, meta_key
from ..validation import check_bool
from .segmentation_base import StageTimer, _check_same_grid, _SegmentationTransform

__all__ = ["SkullStrip"]


class SkullStrip(_SegmentationTransform):
    """Brain extraction with a U-Net: a 0/1 brain mask, and (optionally) the images masked by it.

    The mask (uint8 ``[1, D, H, W]``, a copy of the source's metadata) is the network's
    non-background voxels on the source image's current grid, cleaned up by default: only the
    largest 6-connected component is kept and enclosed holes are filled (as
    ``scipy.ndimage``), which removes stray islands outside the head and gaps in the ventricles.
    With ``apply`` every key is set to 0 outside the mask (label maps keep their dtype).

    Parameters
    ----------
    keys:
        Image keys to mask; all on the source's grid.
    mask_key:
        Key of the brain mask.
    model:
        ``"brain-mask"`` (the bundled weights), a checkpoint path, or a module with ``spec``.
    apply:
        Zero every key outside the mask.
    source_key:
        The image the mask is computed from (default: the first key).
    largest_component, fill_holes:
        Clean-up of the predicted mask (both on by default), done on the bounding box of the
        predicted voxels (the same result, as the whole volume outside it is background).
    device, sw_batch_size, overlap, allow_missing_keys, progress:
        As in :class:`~gpuprep.models.inference.SegmentBrain`.
    timer:
        As in :class:`~gpuprep.models.inference.SegmentBrain`; the stages are ``"network"`` and ``"clean-up"``.
    flip_average:
        As in :class:`~gpuprep.models.inference.SegmentBrain`; off by default here (the mask model already meets its
        target, and skull stripping often runs on every scan of a dataset).

    Example
    -------
    >>> import tempfile, pathlib, torch, gpuprep as gp
    >>> from gpuprep.models.unet import build_unet, save_checkpoint
    >>> arch = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2]}
    >>> spec = {"task": "brain-mask", "architecture": arch, "spacing_mm": 2.0, "roi_size": [16, 16, 16],
    ...         "labels": {"0": "background", "1": "brain"}, "intensity": {"percentiles": [0.5, 99.5]}}
    >>> path = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "tiny.pt", build_unet(arch), spec)
    >>> out = SkullStrip("image", model=path, device="cpu")(gp.make_sample({"image": torch.rand(1, 12, 12, 12)}))
    >>> bool(((out["image"] != 0) <= out["brain_mask"].bool()).all())
    True
    """

    def __init__(
        self,
        keys: str | Sequence[str] = "image",
        mask_key: str = "brain_mask",
        model: str | os.PathLike | torch.nn.Module = "brain-mask",
        apply: bool = True,
        source_key: str | None = None,
        largest_component: bool = True,
        fill_holes: bool = True,
        device: str | torch.device = "auto",
        sw_batch_size: int = 2,
        overlap: float = 0.25,
        flip_average: bool = False,
        allow_missing_keys: bool = False,
        progress: ProgressCallback | None = None,
        timer: StageTimer | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.source_key = self.keys[0] if source_key is None else source_key
        if self.source_key not in self.keys:
            raise ConfigError(f"{name}: source_key must be one of keys {self.keys}, got {source_key!r}")
        if not isinstance(mask_key, str) or not mask_key or mask_key in self.keys:
            raise ConfigError(
                f"{name}: mask_key must be a non-empty string not among keys {self.keys}, got {mask_key!r}"
            )
        for option, value in (("apply", apply), ("largest_component", largest_component), ("fill_holes", fill_holes)):
            check_bool(name, option, value)
        self.mask_key, self.apply = mask_key, apply
        self.largest_component, self.fill_holes = largest_component, fill_holes
        self._set_model(model, device, sw_batch_size, overlap, flip_average, progress, timer)

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        self._check_replay(params)
        name = type(self).__name__
        if self.source_key not in keys:
            raise TransformError(f"{name}: the source image {self.source_key!r} is not in the sample")
        for key in keys:
            _check_same_grid(batch, key, self.source_key, name)
        mask = self._segment(batch, self.source_key) > 0  # reports the "network" stage of each image
        start = time.perf_counter()
        if self.largest_component or self.fill_holes:
            mask = torch.stack([self._clean(volume) for volume in mask])
        self._report("clean-up", start)
        if self.apply:
            for key in keys:
                batch[key] = torch.where(mask, batch[key], torch.zeros((), dtype=batch[key].dtype,
                                                                       device=batch[key].device))
        batch[self.mask_key] = mask.to(torch.uint8)
        batch[meta_key(self.mask_key)] = copy_meta(batch.get(meta_key(self.source_key), {}), kind=LABEL)
        return batch

    def _clean(self, mask: torch.Tensor) -> torch.Tensor:
        """The largest component and/or filled holes of one mask ``[1, D, H, W]``, worked out on its bounding box.

        The box has one voxel of background around it where the volume allows: components and
        holes (background not connected to the volume's border) are then the same as on the
        whole volume, whose outside of the box is background connected to that border.
        """
        box = bounding_box(mask[0], 1)
        if box is None:
            return mask
        inside = mask[(slice(None), *box)]
        if self.largest_component:
            inside = largest_component(inside)
        if self.fill_holes:
            inside = fill_holes(inside)
        cleaned = torch.zeros_like(mask)
        cleaned[(slice(None), *box)] = inside
        return cleaned
