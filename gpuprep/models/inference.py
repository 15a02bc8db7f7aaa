"""Brain-tissue segmentation with the bundled U-Net as a dictionary transform, and what skull stripping shares.

:class:`SegmentBrain` and :class:`~gpuprep.models.skull_strip.SkullStrip` (in its own module) take
an image on whatever grid it is on now (the file's, or after any preprocessing), run the network's
own preprocessing on a private copy
(``Orientation("RAS")``, ``Resample`` to the spec's spacing, ``RescaleIntensity`` with the spec's
percentiles to [0, 1], ``PadToMultiple`` of the U-Net's total stride), predict by sliding windows
(optionally averaged with the prediction of each window's left-right mirror) and map the class
probabilities back onto the image's current grid through that copy's history
(:func:`gpuprep.data.sliding_window.predict_sample`), where the argmax gives the label map
(:class:`SegmentBrain` first sharpens the tissue probabilities with the image's own intensities,
:mod:`gpuprep.models.refine`). The
result is a new key on the image's grid (same shape and affine); the image itself is not moved,
so these transforms are neither spatial nor invertible, and they are deterministic.

On a whole head, :class:`SegmentBrain` takes the brain mask of :class:`~gpuprep.models.skull_strip.SkullStrip` (its
``mask_key``): the work then covers only the mask's bounding box plus 20 mm (a 1 mm head of 256^3
needs 8 of the 27 tissue windows), and the labels outside the mask are 0. ``gpuprep segment --task
brain-tissue`` runs exactly ``Compose([SkullStrip("image", mask_key="brain_mask"),
SegmentBrain("image", mask_key="brain_mask")])``.

Samples are processed one at a time (each may have its own affine, hence its own resampled
grid) on the network's device; the label map goes back to the device of the input.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence

import torch

from ..data.sliding_window import ProgressCallback
from ..errors import ConfigError, TransformError
from ..sample import copy_meta, dtype_kind, meta_key
from ..validation import check_bool
from .segmentation_base import StageTimer, _check_same_grid, _SegmentationTransform

__all__ = ["SegmentBrain"]

#: Default margin (mm) around the bounding box of SegmentBrain's brain mask: the image is cropped to
#: the box plus this margin before the network's preprocessing. The image is 0 there, but the U-Net
#: needs that context: near a window's edge (its zero-padded convolutions) it predicts worse, and on
#: the MNI T1 a 3 mm margin cost 0.021 CSF Dice and 10 mm 0.017, where 20 mm matched the whole
#: image (CSF 0.785 vs 0.780) and still needs only 8 windows for a 1 mm head, of the 27 of its grid.
MASK_MARGIN_MM = 20.0


class SegmentBrain(_SegmentationTransform):
    """Segment brain tissue with a U-Net: a label map on the image's current grid.

    The labels are the model's (``spec["labels"]``; for ``"brain-tissue"``: 0 background,
    1 CSF, 2 GM, 3 WM), written as uint8 ``[1, D, H, W]`` to ``output_key`` with a copy of the
    image's metadata (same affine). The history records the task, the weights file and its
    SHA-256 and the label names. See the module docstring for the steps.

    On a whole head, skull-strip first and hand the brain mask over (``mask_key``), as
    ``gpuprep segment`` does::

        gp.Compose([gp.SkullStrip("image", mask_key="brain_mask"),
                    gp.SegmentBrain("image", mask_key="brain_mask")])

    Parameters
    ----------
    keys:
        The one image key to segment (a skull-stripped T1-like brain for ``"brain-tissue"``).
    output_key:
        Key of the label map.
    mask_key:
        A brain mask in the sample (nonzero = brain, one channel, on the image's grid; e.g.
        :class:`~gpuprep.models.skull_strip.SkullStrip`'s ``brain_mask``, or :class:`~gpuprep.ForegroundMask` of a
        skull-stripped image). The image is cropped to the mask's bounding box plus
        ``mask_margin_mm`` and set to 0 outside the mask before the network sees it, so only the
        sliding windows over the brain run and the refinement works on that box; every label
        outside the mask is 0. ``None`` (default): the whole image.
    mask_margin_mm:
        With ``mask_key``: the margin in mm added to the mask's bounding box on every side
        (default :data:`MASK_MARGIN_MM`, 20 mm: the network needs zero context around the brain
        to predict its surface as on the whole image).
    model:
        ``"brain-tissue"`` (the bundled weights), the path of a checkpoint file, or a
        ``torch.nn.Module`` with a ``spec`` dict (e.g. from :func:`~gpuprep.models.pretrained.load_pretrained`).
    device:
        Where the network runs: ``"auto"`` (CUDA when available; for a module, where it is),
        ``"cpu"``, ``"cuda"``.
    sw_batch_size:
        Windows per network call.
    overlap:
        Overlap of the sliding windows, in ``[0, 1)``.
    flip_average:
        Test-time augmentation: average the probabilities of each window and of its left-right
        mirror (twice the network time). On the MNI T1 it raised the shipped tissue model's Dice
        by 0.008 to 0.021 per tissue (see its model card).
    refine:
        Sharpen the probabilities on the image's grid with its own intensities before the
        argmax: one Gaussian per tissue is fitted to this image, weighted by the network's
        probabilities (local means over :data:`REFINE_SIGMA_MM`, which follow a bias field), and
        combined with them by Bayes' rule; background keeps its probability
        (:func:`~gpuprep.models.refine.refine_tissue_probabilities`). It recovers boundaries
        finer than the network's 1.5 mm grid; see the model card for what it gains.
    allow_missing_keys:
        Skip (write nothing) when the image is absent.
    progress:
        Called as ``progress(windows_done, windows_total)`` after every network call; the count
        starts again for each image of a batch (e.g. to draw a progress bar, as ``gpuprep
        segment`` does). It does not change the output and is not recorded.
    timer:
        Called as ``timer(stage, seconds)`` after each stage of each image: ``"network"`` (the
        preprocessing, the sliding windows and mapping the prediction back) and, with
        ``refine``, ``"refine"`` (the refinement and the argmax); on CUDA after a synchronisation.
        It does not change the output and is not recorded.

    Example
    -------
    >>> import tempfile, pathlib, torch, gpuprep as gp
    >>> from gpuprep.models.unet import build_unet, save_checkpoint
    >>> arch = {"spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [4, 8], "strides": [2]}
    >>> spec = {"task": "brain-tissue", "architecture": arch, "spacing_mm": 2.0, "roi_size": [16, 16, 16],
    ...         "labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"},
    ...         "intensity": {"percentiles": [0.5, 99.5]}}
    >>> path = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "tiny.pt", build_unet(arch), spec)
    >>> sample = gp.make_sample({"image": torch.rand(1, 20, 18, 9)}, affine=torch.diag(torch.tensor([1.5, 1.5, 3, 1])))
    >>> out = SegmentBrain("image", model=path, device="cpu")(sample)
    >>> out["tissue"].shape, out["tissue"].dtype
    (torch.Size([1, 20, 18, 9]), torch.uint8)
    """

    output_key: str
    mask_key: str | None

    def __init__(
        self,
        keys: str | Sequence[str] = "image",
        output_key: str = "tissue",
        model: str | os.PathLike | torch.nn.Module = "brain-tissue",
        device: str | torch.device = "auto",
        sw_batch_size: int = 2,
        overlap: float = 0.25,
        flip_average: bool = True,
        refine: bool = True,
        mask_key: str | None = None,
        mask_margin_mm: float = MASK_MARGIN_MM,
        allow_missing_keys: bool = False,
        progress: ProgressCallback | None = None,
        timer: StageTimer | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        if len(self.keys) != 1:
            raise ConfigError(f"{name}: keys must name exactly one image, got {self.keys!r}")
        if not isinstance(output_key, str) or not output_key or output_key == self.keys[0]:
            raise ConfigError(
                f"{name}: output_key must be a non-empty string different from the image key "
                f"{self.keys[0]!r}, got {output_key!r}"
            )
        if mask_key is not None and (not isinstance(mask_key, str) or not mask_key
                                     or mask_key in (self.keys[0], output_key)):
            raise ConfigError(
                f"{name}: mask_key must be None or a non-empty string other than the image and output keys, "
                f"got {mask_key!r}"
            )
        check_bool(name, "refine", refine)
        if isinstance(mask_margin_mm, bool) or not isinstance(mask_margin_mm, numbers.Real) or \
                not 0 <= mask_margin_mm < math.inf:
            raise ConfigError(f"{name}: mask_margin_mm must be a non-negative number, got {mask_margin_mm!r}")
        self.output_key = output_key
        self.refine = refine
        self.mask_key, self.mask_margin_mm = mask_key, float(mask_margin_mm)
        self._set_model(model, device, sw_batch_size, overlap, flip_average, progress, timer)

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        self._check_replay(params)
        (key,) = keys
        masks = None
        if self.mask_key is not None:
            name = type(self).__name__
            if self.mask_key not in batch:
                raise TransformError(f"{name}: the brain mask {self.mask_key!r} is not in the sample "
                                     f"(make it with SkullStrip or ForegroundMask first)")
            _check_same_grid(batch, self.mask_key, key, name)
            if batch[self.mask_key].shape[-4] != 1:
                raise TransformError(f"{name}: the brain mask {self.mask_key!r} must have one channel, "
                                     f"got {batch[self.mask_key].shape[-4]}")
            masks = batch[self.mask_key] != 0
            if masks.ndim == 4:  # one sample (batches are [B, C, D, H, W])
                masks = masks[None]
        batch[self.output_key] = self._segment(batch, key, masks)
        # A label map (integers) is a label; tissue probabilities are interpolated like an image.
        kind = dtype_kind(batch[self.output_key])
        batch[meta_key(self.output_key)] = copy_meta(batch.get(meta_key(key), {}), kind=kind)
        return batch
