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
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..data.sliding_window import ProgressCallback, predict_sample
from ..errors import ConfigError, TransformError
from ..functional.grid import spacing_of
from ..functional.morphology import bounding_box
from ..sample import copy_meta, dtype_kind, make_sample, meta_key
from ..transforms.base import Transform
from ..transforms.compose import Compose
from ..transforms.intensity.rescale import RescaleIntensity
from ..transforms.spatial.crop_pad import PadToMultiple
from ..transforms.spatial.orientation import Orientation
from ..transforms.spatial.resample import Resample
from .pretrained import TASKS, load_pretrained, resolve_device
from .refine import refine_tissue_probabilities
from .unet import check_spec, state_digest

__all__ = ["SegmentBrain"]

#: ``timer(stage, seconds)``: told how long each stage of each image took (see ``SegmentBrain``).
StageTimer = Callable[[str, float], None]

# Width (mm) of the local tissue means of the intensity refinement: narrow enough to follow a
# bias field, wide enough to average many voxels of each tissue (5 to 10 mm scored alike on the
# MNI T1, 20 mm lost 0.005 under a bias field).
REFINE_SIGMA_MM = 10.0
#: Default margin (mm) around the bounding box of SegmentBrain's brain mask: the image is cropped to
#: the box plus this margin before the network's preprocessing. The image is 0 there, but the U-Net
#: needs that context: near a window's edge (its zero-padded convolutions) it predicts worse, and on
#: the MNI T1 a 3 mm margin cost 0.021 CSF Dice and 10 mm 0.017, where 20 mm matched the whole
#: image (CSF 0.785 vs 0.780) and still needs only 8 windows for a 1 mm head, of the 27 of its grid.
MASK_MARGIN_MM = 20.0


class _SegmentationTransform(Transform, abstract=True):
    """Model handling and inference shared by :class:`SegmentBrain` and
    :class:`~gpuprep.models.skull_strip.SkullStrip`."""

    # Sharpen the tissue probabilities with the image's intensities (SegmentBrain sets it).
    refine = False

    def _set_model(self, model: Any, device: Any, sw_batch_size: int, overlap: float, flip_average: bool,
                   progress: ProgressCallback | None, timer: StageTimer | None) -> None:
        name = type(self).__name__
        if progress is not None and not callable(progress):
            raise ConfigError(f"{name}: progress must be a callable (windows_done, windows_total) or None, "
                              f"got {progress!r}")
        if timer is not None and not callable(timer):
            raise ConfigError(f"{name}: timer must be a callable (stage, seconds) or None, got {timer!r}")
        self.progress, self.timer = progress, timer
        if not isinstance(flip_average, bool):
            raise ConfigError(f"{name}: flip_average must be True or False, got {flip_average!r}")
        self.flip_average = flip_average
        if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
            raise ConfigError(f"{name}: sw_batch_size must be a positive int, got {sw_batch_size!r}")
        if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not 0 <= overlap < 1:
            raise ConfigError(f"{name}: overlap must be a number in [0, 1), got {overlap!r}")
        self.sw_batch_size, self.overlap = sw_batch_size, float(overlap)
        if isinstance(model, torch.nn.Module):
            if not hasattr(model, "spec"):
                raise ConfigError(f"{name}: a model given as a module needs a .spec dict (see load_pretrained)")
            check_spec(model.spec, f"{name}: model.spec")
            current = next(iter(model.parameters()), torch.empty(0)).device
            self.device = current if device == "auto" else resolve_device(device, name)
            self.model = model if self.device == current else _moved_copy(model, self.device)
            self.model_name = getattr(model, "weights_file", None) or type(model).__name__
            self.weights_sha256 = getattr(model, "weights_sha256", None) or state_digest(model)
        elif isinstance(model, (str, os.PathLike)):
            self.device = resolve_device(device, name)
            self.model = load_pretrained(model, self.device)
            self.model_name = model if isinstance(model, str) and model in TASKS else self.model.weights_file
            self.weights_sha256 = self.model.weights_sha256
        else:
            raise ConfigError(
                f"{name}: model must be a task name ('brain-tissue', 'brain-mask'), a checkpoint path or a "
                f"module with .spec, got {type(model).__name__}"
            )
        self.spec = check_spec(self.model.spec, f"{name}: model.spec")
        self.model.eval()
        strides = math.prod(self.spec["architecture"]["strides"])
        # Padding repeats the edge (to the U-Net's multiple, and in the sliding windows):
        # zeros would frame a bright background with a dark border, which the network takes for
        # the skull around a brain.
        self._preprocess = Compose([
            Orientation("image", "RAS"),
            Resample("image", self.spec["spacing_mm"]),
            RescaleIntensity("image", percentiles=self.spec["intensity"]["percentiles"], out_range=(0.0, 1.0)),
            PadToMultiple("image", strides, padding_mode="border"),
        ])

    def get_config(self) -> dict:
        """The constructor arguments; a model passed as a module is named, and cannot be rebuilt.

        ``progress`` and ``timer`` are left out: they only report, and do not change the output.
        """
        config = super().get_config()
        config.pop("progress", None)
        config.pop("timer", None)
        if isinstance(config.get("model"), torch.nn.Module):
            config["model"] = f"<module {self.model_name}>"
        if isinstance(config.get("model"), os.PathLike):
            config["model"] = os.fspath(config["model"])
        return config

    def fingerprint(self) -> dict:
        """The configuration and the SHA-256 of the weights in use (read at construction).

        The weights, not the checkpoint's path, decide the output: a checkpoint overwritten
        since (or a module passed in, named only by its class) gets a new cache key.
        """
        return {**super().fingerprint(), "weights_sha256": self.weights_sha256}

    def make_params(self, batch: dict, keys: list[str]) -> list[dict]:
        params = {"task": self.spec["task"], "model": self.model_name, "weights_sha256": self.weights_sha256,
                  "labels": dict(self.spec["labels"]), "spacing_mm": self.spec["spacing_mm"],
                  "flip_average": self.flip_average, "refine": self.refine}
        return [dict(params) for _ in range(len(batch[keys[0]]))]

    def _check_replay(self, params: list[dict]) -> None:
        for p in params:
            recorded = p.get("weights_sha256")
            if recorded is not None and recorded != self.weights_sha256:
                raise TransformError(
                    f"{type(self).__name__}: the history was made with weights {recorded[:12]}..., this model's "
                    f"weights are {self.weights_sha256[:12]}...; the result would differ"
                )

    def _segment(self, batch: dict, key: str, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Label maps uint8 ``[B, 1, D, H, W]`` of ``batch[key]`` on its own grid and device.

        With ``masks`` (bool ``[B, 1, D, H, W]`` on the same grid) each image is cropped to its
        mask's bounding box (plus ``mask_margin_mm``) and set to 0 outside the mask before the
        network sees it; the labels outside the mask are 0, pasted back into a map of zeros.
        """
        images = batch[key]
        in_channels = self.spec["architecture"]["in_channels"]
        if images.shape[1] != in_channels:
            raise TransformError(
                f"{type(self).__name__}: {key!r} has {images.shape[1]} channel(s), the model takes {in_channels}"
            )
        affines = batch[meta_key(key)]["affine"]
        labels = []
        for index, (image, affine) in enumerate(zip(images, affines)):
            start = time.perf_counter()
            image = image.to(self.device, torch.float32)
            full_shape, box, mask = image.shape[1:], None, None
            if masks is not None:
                mask = masks[index].to(self.device)
                spacing = spacing_of(affine.cpu().numpy())
                box = bounding_box(mask[0], [math.ceil(self.mask_margin_mm / float(s)) for s in spacing])
                if box is None:  # an empty mask: no brain, nothing to segment
                    labels.append(torch.zeros((1, *full_shape), dtype=torch.uint8, device=self.device))
                    continue
                mask = mask[(slice(None), *box)]
                image = torch.where(mask, image[(slice(None), *box)], torch.zeros((), device=self.device))
                affine = _cropped_affine(affine, box)
            sub = make_sample({"image": image}, affine=affine)
            sub = self._preprocess(sub)
            out = predict_sample(sub, self._predict, self.spec["roi_size"], "image", sw_batch_size=self.sw_batch_size,
                                 overlap=self.overlap, padding_mode="replicate", argmax=not self.refine,
                                 invert=True, output_key="labels", progress=self.progress or False)
            predicted = out["labels"]
            start = self._report("network", start)
            if self.refine:  # probabilities on the image's grid: sharpen them with its intensities
                tissues = range(1, len(self.spec["labels"]))
                sigma = [REFINE_SIGMA_MM / float(s) for s in spacing_of(affine.cpu().numpy())]
                probabilities = refine_tissue_probabilities(predicted, image, tissues, sigma)
                predicted = probabilities.max(0, keepdim=True).indices  # the argmax, faster on the CPU
            if mask is not None:
                predicted = predicted * mask
            predicted = predicted.to(torch.uint8)
            if box is not None:
                pasted = torch.zeros((1, *full_shape), dtype=torch.uint8, device=predicted.device)
                pasted[(slice(None), *box)] = predicted
                predicted = pasted
            labels.append(predicted)
            if self.refine:
                self._report("refine", start)
        return torch.stack(labels).to(images.device)

    def _report(self, stage: str, start: float) -> float:
        """Tell the timer how long ``stage`` took since ``start``; return the time now."""
        if self.timer is None:
            return start
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timer(stage, now - start)
        return now

    def _predict(self, windows: torch.Tensor) -> torch.Tensor:
        # Probabilities, not logits: they interpolate sensibly on the way back, and the zeros
        # given to regions outside the preprocessed grid then mean background.
        probabilities = torch.softmax(self.model(windows).float(), dim=1)
        if self.flip_average:
            # The windows are RAS (the preprocessing reorients), so dim 2 is left-right: the
            # mirrored brain is as plausible an input as the brain itself.
            mirrored = torch.softmax(self.model(windows.flip(2)).float(), dim=1).flip(2)
            probabilities = (probabilities + mirrored) / 2
        return probabilities


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
        if not isinstance(refine, bool):
            raise ConfigError(f"{name}: refine must be True or False, got {refine!r}")
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


def _check_same_grid(batch: dict, key: str, reference: str, name: str) -> None:
    """Refuse ``batch[key]`` unless it has the shape and affine of ``batch[reference]``."""
    shape, expected = batch[key].shape[-3:], batch[reference].shape[-3:]
    if shape != expected or not torch.allclose(batch[meta_key(key)]["affine"], batch[meta_key(reference)]["affine"],
                                               atol=1e-4):
        raise TransformError(
            f"{name}: {key!r} is not on the grid of {reference!r} (shape {tuple(shape)} vs {tuple(expected)}, "
            f"or a different affine); resample it first"
        )


def _cropped_affine(affine: torch.Tensor, box: Sequence[slice]) -> torch.Tensor:
    """The affine of the sub-grid that starts at the box's first voxel."""
    cropped = affine.clone()
    offset = torch.tensor([float(b.start) for b in box], dtype=affine.dtype, device=affine.device)
    cropped[:3, 3] = affine[:3, 3] + affine[:3, :3] @ offset
    return cropped


def _moved_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A copy of ``model`` on ``device`` (the caller's module is left where it is)."""
    import copy

    moved = copy.deepcopy(model).to(device)
    moved.spec = model.spec
    return moved
