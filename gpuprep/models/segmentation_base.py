"""What SegmentBrain and SkullStrip share: model handling, the network's private preprocessing, inference.

``_SegmentationTransform`` loads the model (a task name, a checkpoint path or a module),
runs the network's own preprocessing on a private copy of the image, predicts by sliding
windows and maps the class probabilities back onto the image's grid (see
:mod:`gpuprep.models.inference` for the whole story); :class:`~gpuprep.models.inference.SegmentBrain`
and :class:`~gpuprep.models.skull_strip.SkullStrip` add what is their own.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from ..data.sliding_window import ProgressCallback, predict_sample
from ..errors import ConfigError, TransformError
from ..functional.grid import spacing_of
from ..functional.morphology import bounding_box
from ..sample import make_sample, meta_key
from ..transforms.base import Transform
from ..transforms.compose import Compose
from ..transforms.intensity.rescale import RescaleIntensity
from ..transforms.spatial.crop_pad import PadToMultiple
from ..transforms.spatial.orientation import Orientation
from ..transforms.spatial.resample import Resample
from ..validation import check_bool
from .pretrained import TASKS, load_pretrained, resolve_device
from .refine import refine_tissue_probabilities
from .unet import check_spec, state_digest

__all__ = ["StageTimer"]

#: ``timer(stage, seconds)``: told how long each stage of each image took (see ``SegmentBrain``).
StageTimer = Callable[[str, float], None]

# Width (mm) of the local tissue means of the intensity refinement: narrow enough to follow a
# bias field, wide enough to average many voxels of each tissue (5 to 10 mm scored alike on the
# MNI T1, 20 mm lost 0.005 under a bias field).
REFINE_SIGMA_MM = 10.0


class _SegmentationTransform(Transform, abstract=True):
    """Model handling and inference shared by :class:`SegmentBrain` and
    :class:`~gpuprep.models.skull_strip.SkullStrip`."""

    # Sharpen the tissue probabilities with the image's intensities (SegmentBrain sets it).
    refine = False
    # Set by _set_model.
    progress: ProgressCallback | None
    timer: StageTimer | None
    flip_average: bool
    sw_batch_size: int
    overlap: float
    device: torch.device
    model: torch.nn.Module
    model_name: str
    weights_sha256: str
    spec: dict
    _preprocess: Compose
    # Set by the subclasses that pass masks to _segment.
    mask_margin_mm: float

    def _set_model(self, model: Any, device: Any, sw_batch_size: int, overlap: float, flip_average: bool,
                   progress: ProgressCallback | None, timer: StageTimer | None) -> None:
        name = type(self).__name__
        if progress is not None and not callable(progress):
            raise ConfigError(f"{name}: progress must be a callable (windows_done, windows_total) or None, "
                              f"got {progress!r}")
        if timer is not None and not callable(timer):
            raise ConfigError(f"{name}: timer must be a callable (stage, seconds) or None, got {timer!r}")
        self.progress, self.timer = progress, timer
        self.flip_average = check_bool(name, "flip_average", flip_average)
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
            # load_pretrained sets these two attributes (strings) on the module it returns
            self.model_name = model if isinstance(model, str) and model in TASKS else cast(str, self.model.weights_file)
            self.weights_sha256 = cast(str, self.model.weights_sha256)
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
            predicted = cast(dict, out)["labels"]  # one sample in, one dict out
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
