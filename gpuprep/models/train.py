"""Train the shipped U-Nets on synthetic images generated from label maps (SynthSeg / SynthStrip).

Every training batch is made on the device from label maps alone: the MNI tissue fractions
(``brain-tissue``; partial volumes, so a voxel half GM and half WM gets the mean of the two) or
synthetic heads built around the tissue map (``brain-mask``) are deformed
(RandAffine and RandElastic, fused into one resampling), given a random Gaussian intensity per
label (:class:`~gpuprep.transforms.augment.synth.RandLabelsToImage`, means at least
:data:`MIN_SEPARATION` apart so that every boundary is visible, in any order), then blur, a bias
field, gamma and noise, and cut into label-balanced patches. The network never sees a real T1,
so it does not depend on one contrast. The tissue model works at 1.5 mm: at 2 mm even perfect
soft predictions mapped back to 1 mm cap CSF Dice at 0.76 (thin sulcal CSF), at 1.5 mm at 0.89.
Everything is seeded: the same command gives the same weights on the same device.

Run (``--checkpoint-every N`` also writes the model so far, to evaluate a long run as it goes)::

    python -m gpuprep.models.train --task brain-tissue --steps 4200 --output brain-tissue.pt
    python -m gpuprep.models.train --task brain-mask --steps 3000 --output brain-mask.pt

The brain-mask task also takes whole-head label maps made from real head scans
(``--real-heads DIR``, written by ``scripts/make_training_heads.py``; see
:mod:`gpuprep.models.head_labels`): their face, neck, orbits and skull base are what the synthetic
shells lack. Each of them is then also cut to a random field of view (:func:`random_field_of_view`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..data.loader import resolve_device
from ..data.patches import RandPatches
from ..data.sample_data import sample_brain
from ..errors import ConfigError
from ..io.reader import read_image
from ..optional import require_monai
from ..sample import collate, make_sample
from ..transforms import (
    Compose,
    RandAffine,
    RandAnisotropy,
    RandBiasField,
    RandBlur,
    RandElastic,
    RandGamma,
    RandNoise,
    Resample,
    RescaleIntensity,
)
from ..transforms.augment.synth import RandLabelsToImage
from .mni import mni_tissue_fractions
from .synth import HEAD_LABELS, synthetic_head
from .unet import build_unet, load_checkpoint, save_checkpoint

TASK_LABELS = {
    "brain-tissue": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"},
    "brain-mask": {"0": "background", "1": "brain"},
}
PERCENTILES = [0.5, 99.5]
NUM_HEADS = 24  # synthetic heads for the brain-mask task (seeds below 10000; evaluation uses others)


DEFAULT_SPACING = {"brain-tissue": 1.5, "brain-mask": 2.0}
DEFAULT_CHANNELS = {"brain-tissue": (16, 32, 64, 128, 128), "brain-mask": (16, 32, 64, 128)}
# Smallest difference between two labels' mean intensities (on the 0..1 scale before the bias
# field and gamma): a draw where two tissues get the same intensity has no visible boundary, so it
# only teaches the network to guess. Every ordering of the tissues is still drawn.
MIN_SEPARATION = {"brain-tissue": 0.15, "brain-mask": 0.05}
# Patch centres: brain voxels vs the rest, per task. Tissue patches sit mostly on the brain (the
# classes to learn). A skull stripper sees whole heads at inference, so half its patches are
# centred off the brain (scalp, skull and background far from the head).
POS_NEG_RATIO = {"brain-tissue": (9, 1), "brain-mask": (1, 1)}
# Real-head label maps appear this many times as often as one synthetic head in the training
# list (with 3 real heads and 8 synthetic ones: 15 of 23 draws are real heads).
REAL_HEAD_WEIGHT = 5
# Probability that a real head is cut to a random field of view, and the smallest kept fraction
# of each axis: scans that stop at the chin, cut the top of the head, or show the whole neck.
FIELD_OF_VIEW_P = 0.5
FIELD_OF_VIEW_MIN = 0.55


def real_head_label_maps(folder: str | Path, spacing: float) -> tuple[list[torch.Tensor], list, list[torch.Tensor]]:
    """The whole-head label maps ``NAME_labels.nii.gz`` of ``folder`` at ``spacing`` mm (nearest).

    Returns label maps, affines and targets (brain = labels 1-3), in name order.
    """
    files = sorted(Path(folder).glob("*_labels.nii.gz"))
    if not files:
        raise ConfigError(f"train: --real-heads {folder} holds no *_labels.nii.gz file "
                          "(make them with scripts/make_training_heads.py)")
    maps, affines, targets = [], [], []
    for path in files:
        data, meta = read_image(path, dtype=torch.uint8)
        fine = make_sample({"label": data}, affine=meta["affine"])
        coarse = Resample("label", spacing, label_mode="nearest")(fine)
        maps.append(coarse["label"])
        affines.append(coarse["label_meta"]["affine"].numpy())
        targets.append(((coarse["label"] >= 1) & (coarse["label"] <= 3)).to(torch.uint8))
    return maps, affines, targets


def random_field_of_view(tensors: list[torch.Tensor], generator: torch.Generator,
                         min_fraction: float = FIELD_OF_VIEW_MIN) -> list[torch.Tensor]:
    """Cut volumes ``[C, D, H, W]`` (all the same shape) to one random box and pad back by replication.

    Each axis keeps a random fraction in ``[min_fraction, 1]`` at a random offset; the removed
    part is refilled by repeating the box's edge, as inference pads a scan (``padding_mode =
    "replicate"``), so the network learns what a scan that ends mid-neck or mid-head looks like
    at its border. The shape is unchanged, so the volumes still collate into a batch.
    """
    shape = tensors[0].shape[1:]
    pads, box = [], []
    for n in shape:
        keep = max(1, math.ceil(n * (min_fraction + (1 - min_fraction) * torch.rand((), generator=generator).item())))
        start = int(torch.randint(0, n - keep + 1, (), generator=generator))
        box.append(slice(start, start + keep))
        pads.append((start, n - keep - start))
    flat = [p for before_after in reversed(pads) for p in before_after]
    out = []
    for tensor in tensors:
        cut = tensor[(slice(None), *box)].float()[None]
        out.append(torch.nn.functional.pad(cut, flat, mode="replicate")[0].to(tensor.dtype))
    return out


def label_maps(task: str, seed: int, num_heads: int = NUM_HEADS,
               spacing: float = 2.0) -> tuple[list[torch.Tensor], list, list[torch.Tensor]]:
    """The label maps the generator draws from, their affines, and the training target of each.

    ``brain-tissue``: the MNI152 tissue fractions (background, CSF, GM, WM; nilearn's 1 mm
    templates, :func:`~gpuprep.models.mni.mni_tissue_fractions`) resampled to ``spacing`` (linear), so the
    generated images have the template's partial volumes, for example white matter that darkens
    towards the cortex; target = their tissue labels (as in the bundled 1 mm map) resampled one-hot.
    ``brain-mask``: synthetic heads around the bundled 2 mm map (labels of :data:`HEAD_LABELS`),
    target = brain (1-3).
    """
    if task == "brain-tissue":
        fractions, labels, affine = mni_tissue_fractions(1)
        fine = make_sample({"label": fractions, "target": labels}, affine=affine)
        coarse = Resample(["label", "target"], spacing, label_mode="onehot")(fine)
        return [coarse["label"]], [coarse["label_meta"]["affine"].numpy()], [coarse["target"]]
    brain = sample_brain()
    tissue, affine = brain["label"], brain["label_meta"]["affine"].numpy()
    heads = [synthetic_head(tissue, affine, seed=seed * 1000 + index) for index in range(num_heads)]
    maps = [labels for labels, _ in heads]
    return maps, [a for _, a in heads], [((m >= 1) & (m <= 3)).to(torch.uint8) for m in maps]


def pad_to_common_shape(maps: list[torch.Tensor], affines: list, targets: list[torch.Tensor]):
    """Zero-pad every label map and target ``[1, D, H, W]`` to the largest shape among them, centred.

    The affines are shifted so that every voxel keeps its world position; the volumes then
    collate into one batch whichever of them a step draws.
    """
    common = [max(m.shape[axis] for m in maps) for axis in (1, 2, 3)]
    out_maps, out_affines, out_targets = [], [], []
    for labels, affine, target in zip(maps, affines, targets):
        before = [(c - n) // 2 for c, n in zip(common, labels.shape[1:])]
        flat = [p for b, n, c in reversed(list(zip(before, labels.shape[1:], common))) for p in (b, c - n - b)]
        out_maps.append(torch.nn.functional.pad(labels, flat))
        out_targets.append(torch.nn.functional.pad(target, flat))
        shifted = affine.copy()
        shifted[:3, 3] = affine[:3, :3] @ -np.asarray(before, dtype=np.float64) + affine[:3, 3]
        out_affines.append(shifted)
    return out_maps, out_affines, out_targets


def generator(task: str, patch: int, num_patches: int, num_labels: int, seed: int) -> Compose:
    """The batched image generator: deformation, random contrast, artefacts, normalisation, patches."""
    keys = ["label", "target"]
    whole_head = task == "brain-mask"
    return Compose([
        RandAffine(keys, rotate=20, scale=0.15, shear=0.05, translate=20 if whole_head else 6),
        RandElastic(keys, num_control_points=7, max_displacement=4.0),
        RandLabelsToImage(label_key="label", image_key="image", num_labels=num_labels, mean=(0.0, 1.0),
                          std=(0.0, 0.08), zero_background=0.7 if task == "brain-tissue" else 0.2,
                          min_separation=MIN_SEPARATION[task]),
        RandBlur("image", std=(0.3, 1.0), p=0.8),  # partial volume: real images are never piecewise constant
        *([RandAnisotropy("image", downsampling=(1.5, 4.0), p=0.3)] if whole_head else []),
        RandBiasField("image", coefficients=0.5, order=3, p=0.8),
        RandGamma("image", log_gamma=(-0.4, 0.4)),
        RandNoise("image", std=(0.0, 0.05)),
        RescaleIntensity("image", percentiles=PERCENTILES, out_range=(0.0, 1.0), clip=True),
        RandPatches(["image", "target"], size=patch, num_patches=num_patches, sampler="label",
                    label_key="target", pos_neg_ratio=POS_NEG_RATIO[task]),
    ], seed=seed)


def train(task: str, steps: int = 3000, batch_size: int = 2, num_patches: int = 2, patch: int = 64,
          channels: Sequence[int] | None = None, lr: float = 2e-3, device: str = "auto", seed: int = 0,
          progress: bool = True, num_heads: int = NUM_HEADS,
          spacing: float | None = None, init: str | Path | None = None,
          checkpoint: str | Path | None = None, checkpoint_every: int = 0,
          real_heads: str | Path | None = None) -> tuple[torch.nn.Module, dict]:
    """Train one task and return the model (eval mode) and its spec (see ``gpuprep/models/weights``).

    ``channels`` defaults to :data:`DEFAULT_CHANNELS` of the task. ``init`` continues from a
    checkpoint of the same task and architecture; its training record is kept under
    ``spec["training"]["previous"]``. With ``checkpoint`` and ``checkpoint_every = n > 0`` the
    model so far is written there (atomically) every ``n`` steps, so a long run can be evaluated
    while it goes on; the spec's ``training.steps_done`` says how far it got. ``real_heads``
    (brain-mask only) adds the whole-head label maps of that folder
    (:func:`real_head_label_maps`), each :data:`REAL_HEAD_WEIGHT` times, cut to a random field of
    view with probability :data:`FIELD_OF_VIEW_P`.
    """
    losses = require_monai("train", "monai.losses")
    from tqdm import tqdm

    if task not in TASK_LABELS:
        raise ConfigError(f"train: task must be one of {sorted(TASK_LABELS)}, got {task!r}")
    torch.manual_seed(seed)
    run_device = resolve_device(device)
    spacing = DEFAULT_SPACING[task] if spacing is None else float(spacing)
    channels = DEFAULT_CHANNELS[task] if channels is None else channels
    maps, affines, targets, is_real, real_names = _training_label_maps(task, seed, num_heads, spacing, real_heads)
    num_labels = 4 if task == "brain-tissue" else max(len(HEAD_LABELS), max(int(m.max()) for m in maps) + 1)
    labels = TASK_LABELS[task]
    architecture = {"spatial_dims": 3, "in_channels": 1, "out_channels": len(labels),
                    "channels": list(channels), "strides": [2] * (len(channels) - 1), "num_res_units": 1}
    model, previous = _initial_model(task, architecture, init, run_device)
    make_batch = generator(task, patch, num_patches, num_labels, seed)
    loss_function = losses.DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    samples = [make_sample({"label": m.to(run_device), "target": t.to(run_device)}, affine=a)
               for m, t, a in zip(maps, targets, affines)]
    history, start = [], time.perf_counter()
    # The spec's fields in the order they are written; the steps done, the time, the final loss
    # and the generator's configuration are filled in by _spec_after at each checkpoint.
    spec = {"task": task, "architecture": architecture, "labels": labels, "spacing_mm": spacing,
            "intensity": {"percentiles": PERCENTILES}, "roi_size": [96, 96, 96], "gpuprep_version": __version__,
            "training": {
                "steps": steps, "steps_done": 0, "batch_size": batch_size, "num_patches": num_patches,
                "patch": patch, "lr": lr, "seed": seed, "num_heads": num_heads if task == "brain-mask" else None,
                "real_heads": real_names, "real_head_weight": REAL_HEAD_WEIGHT if real_names else None,
                "field_of_view": {"p": FIELD_OF_VIEW_P, "min_fraction": FIELD_OF_VIEW_MIN} if real_names else None,
                "device": str(run_device), "seconds": None, "final_loss": None, "generator": None,
                "previous": previous,
            }}
    bar = tqdm(range(steps), desc=f"train {task}", unit="step", disable=not progress)
    view_generator = torch.Generator().manual_seed(seed + 7919)
    model.train()
    for step in bar:
        batch = make_batch(_draw_batch(samples, is_real, step, batch_size, view_generator))
        history.append(_optimise(model, loss_function, optimiser, schedule, batch))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(history[-50:]) / len(history[-50:]):.3f}")
        done = step + 1
        if checkpoint is not None and checkpoint_every > 0 and done % checkpoint_every == 0 and done < steps:
            save_checkpoint(checkpoint, model, _spec_after(spec, history, start, make_batch))
    model.eval()
    return model, _spec_after(spec, history, start, make_batch)


def _training_label_maps(task: str, seed: int, num_heads: int, spacing: float, real_heads: str | Path | None):
    """The label maps, affines and targets to train on, whether each is a real head, and the real heads' files.

    The synthetic ones of :func:`label_maps`, then (brain-mask only) the real heads' label maps
    :data:`REAL_HEAD_WEIGHT` times, all padded to a common shape.
    """
    maps, affines, targets = label_maps(task, seed, num_heads, spacing)
    is_real = [False] * len(maps)
    real_names = []
    if real_heads is not None:
        if task != "brain-mask":
            raise ConfigError(f"train: --real-heads is for the brain-mask task, not {task}")
        real = real_head_label_maps(real_heads, spacing)
        real_names = [p.name for p in sorted(Path(real_heads).glob("*_labels.nii.gz"))]
        for _ in range(REAL_HEAD_WEIGHT):
            maps, affines, targets = maps + real[0], affines + real[1], targets + real[2]
            is_real += [True] * len(real[0])
        maps, affines, targets = pad_to_common_shape(maps, affines, targets)
    return maps, affines, targets, is_real, real_names


def _initial_model(task: str, architecture: dict, init: str | Path | None, device: torch.device):
    """A new U-Net on ``device`` (from torch's seeded generator), or continued from the checkpoint ``init``.

    Returns the model and the training record of ``init`` (with its file's hash), or None.
    """
    model = build_unet(architecture).to(device)
    if init is None:
        return model, None
    start_model, start_spec = load_checkpoint(init)
    if start_spec["task"] != task or start_spec["architecture"] != architecture:
        raise ConfigError(f"train: --init {init} holds a {start_spec['task']} model with architecture "
                          f"{start_spec['architecture']}, not {task} with {architecture}")
    model.load_state_dict(start_model.state_dict())
    return model, {**start_spec["training"], "file_sha256": start_model.weights_sha256}


def _draw_batch(samples: list[dict], is_real: list[bool], step: int, batch_size: int,
                view_generator: torch.Generator) -> dict:
    """The batch of ``step``: the next ``batch_size`` samples in turn, real heads cut to a random field of view."""
    drawn = []
    for index in range(step * batch_size, (step + 1) * batch_size):
        sample = {**samples[index % len(samples)], "sample_index": index}
        if is_real[index % len(samples)] and torch.rand((), generator=view_generator) < FIELD_OF_VIEW_P:
            sample["label"], sample["target"] = random_field_of_view([sample["label"], sample["target"]],
                                                                     view_generator)
        drawn.append(sample)
    return collate(drawn)


def _optimise(model: torch.nn.Module, loss_function, optimiser, schedule, batch: dict) -> float:
    """One optimisation step on ``batch``; returns its loss."""
    loss = loss_function(model(batch["image"]), batch["target"].long())
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    schedule.step()
    return float(loss.detach())


def _spec_after(spec: dict, history: list[float], start: float, make_batch: Compose) -> dict:
    """``spec`` after the steps of ``history`` (their losses) since ``start`` (``time.perf_counter``)."""
    training = {**spec["training"], "steps_done": len(history), "seconds": round(time.perf_counter() - start, 1),
                "final_loss": round(sum(history[-100:]) / len(history[-100:]), 4),
                "generator": make_batch.get_config()["transforms"]}
    return {**spec, "training": training}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train one task and write its checkpoint (and the spec as JSON beside it)."""
    parser = argparse.ArgumentParser(prog="python -m gpuprep.models.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(TASK_LABELS))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-patches", type=int, default=2)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--channels", type=int, nargs="+", default=None,
                        help=f"U-Net channels per level; default {DEFAULT_CHANNELS}")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", type=int, default=NUM_HEADS, help="synthetic heads (brain-mask)")
    parser.add_argument("--real-heads", type=Path, default=None,
                        help="brain-mask: folder of whole-head label maps NAME_labels.nii.gz "
                             "(scripts/make_training_heads.py)")
    parser.add_argument("--spacing", type=float, default=None,
                        help=f"training (and inference) spacing in mm; default {DEFAULT_SPACING}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--output", type=Path, required=True, help="checkpoint path (.pt)")
    parser.add_argument("--init", type=Path, default=None, help="continue from this checkpoint")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="also write the model so far to --output every N steps")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, spec = train(args.task, args.steps, args.batch_size, args.num_patches, args.patch, args.channels,
                        args.lr, args.device, args.seed, progress=not args.no_progress, num_heads=args.heads,
                        spacing=args.spacing, init=args.init, checkpoint=args.output,
                        checkpoint_every=args.checkpoint_every, real_heads=args.real_heads)
    save_checkpoint(args.output, model, spec)
    print(json.dumps(spec["training"] | {"generator": "..."}, indent=1))
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
