"""Measure the shipped models: tissue Dice on the real MNI152 T1 and brain-mask Dice on heads.

The numbers of the model cards come from here. The MNI152 2009a T1 at 1 mm and its grey- and
white-matter and brain-mask templates come from nilearn (a development dependency; it ships
them, nothing is downloaded); the tissue truth is the argmax of (CSF = 1 - GM - WM, GM, WM)
inside the brain mask, as for the bundled sample. The networks were trained on synthetic images
made from those tissue maps (or heads built around them) only: they have never seen the T1's
intensities.

Run: ``python -m gpuprep.models.evaluate --task brain-tissue [--weights PATH]``

With ``--real-heads DIR --peer-masks DIR`` the brain mask is also measured on real whole heads
against the peers' majority vote (:mod:`gpuprep.models.evaluate_real`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..sample import make_sample
from ..transforms import Compose, RandAffine, RandBiasField, RandNoise
from ..transforms.augment.synth import RandLabelsToImage
from ..transforms.mask.foreground import ForegroundMask
from .evaluate_real import dice, evaluate_mask_on_heads
from .inference import SegmentBrain
from .mni import mni_t1, mni_tissue_fractions
from .pretrained import load_pretrained
from .skull_strip import SkullStrip
from .synth import HEAD_LABELS, brain_mask_of, synthetic_head

TISSUE_NAMES = {1: "CSF", 2: "GM", 3: "WM"}
# Synthetic heads never used in training (training draws seeds below 10000).
HELD_OUT_HEAD_SEEDS = tuple(range(10_001, 10_011))
# T1-like intensities (relative to white matter = 1) of the head layers around a real T1 brain.
HEAD_T1 = {0: 0.0, 4: 0.15, 5: 0.08, 6: 0.85}
# Smallest gap between the label means of the "separated" synthetic heads. Fixed here (training
# uses 0.05 since the real-head label maps brought 16 labels) so that the numbers stay comparable
# from one model card to the next.
EVAL_MIN_SEPARATION = 0.08


def mni_tissue(resolution: int = 1) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The MNI152 2009a T1 ``[1, D, H, W]`` float32, its tissue labels (uint8) and the affine."""
    image, affine = mni_t1(resolution)
    return image, mni_tissue_fractions(resolution)[1], affine


def evaluate_tissue(model: torch.nn.Module, resolution: int = 1, perturb_seeds: Sequence[int] = (0, 1, 2),
                    flip_average: bool = True, refine: bool = True, masked: bool = False) -> dict:
    """Dice per tissue on the MNI T1, as it is and under random rotation (<= 20°), bias field and noise.

    The truth of a perturbed copy is defined as the clean one: the argmax of the template's
    tissue fractions, here moved with the image (linear) onto its rotated grid. Moving the label
    map itself by nearest neighbour would alias the one-voxel CSF: that truth agrees with this one
    only to a CSF Dice of 0.85, so it would charge a perfect segmenter a 0.15 drop.
    ``flip_average`` and ``refine`` are passed to :class:`~gpuprep.models.inference.SegmentBrain`
    (on by default, as there). ``masked``: ``SegmentBrain`` gets a brain mask (``mask_key``), the
    T1's voxels above 0 with holes filled (what ``gpuprep segment`` uses for a skull-stripped
    input), moved with the image (nearest neighbour) for the perturbed copies.
    """
    image, truth, affine = mni_tissue(resolution)
    fractions = mni_tissue_fractions(resolution)[0]
    segment = SegmentBrain("image", output_key="tissue", model=model, flip_average=flip_average, refine=refine,
                           mask_key="brain" if masked else None)
    start = make_sample({"image": image}, affine=affine)
    if masked:
        start = ForegroundMask("image", mask_key="brain", method=0.0, largest_component=False)(start)
    clean = segment(dict(start))
    result = {"clean": {name: dice(clean["tissue"], truth, v) for v, name in TISSUE_NAMES.items()},
              "flip_average": flip_average, "refine": refine, "masked": masked}
    perturbed = []
    for seed in perturb_seeds:
        sample = make_sample({"image": image, "fractions": fractions, **({"brain": start["brain"]} if masked else {})},
                             affine=affine)
        sample["sample_index"] = seed
        moved = Compose([RandAffine(["image", "fractions", *(["brain"] if masked else [])], rotate=20),
                         RandBiasField("image", coefficients=0.3), RandNoise("image", std=0.03)], seed=seed)(sample)
        moved_truth = moved.pop("fractions").argmax(0, keepdim=True)
        out = segment(moved)
        perturbed.append({name: dice(out["tissue"], moved_truth, v) for v, name in TISSUE_NAMES.items()})
    result["perturbed"] = {name: float(np.mean([p[name] for p in perturbed])) for name in TISSUE_NAMES.values()}
    result["perturbed_each"] = perturbed
    return result


def evaluate_tissue_in_heads(model: torch.nn.Module, mask_model: torch.nn.Module | str = "brain-mask",
                             seeds: Sequence[int] = HELD_OUT_HEAD_SEEDS[:3], resolution: int = 1,
                             flip_average: bool = True, refine: bool = True) -> dict:
    """Dice per tissue on the MNI T1 inside synthetic heads, skull-stripped first (as ``gpuprep segment``).

    Each head is :func:`t1_in_synthetic_head` (held-out seeds); the pipeline is
    ``SkullStrip(mask_key="brain_mask")`` with ``mask_model``, then ``SegmentBrain(mask_key=
    "brain_mask")``; the truth is the template's tissue labels placed in the head (0 outside the
    brain). The skull stripping's own Dice is reported too: tissue it cuts off is lost.
    """
    image, truth, affine = mni_tissue(resolution)
    pipeline = Compose([
        SkullStrip("image", mask_key="brain_mask", model=mask_model),
        SegmentBrain("image", output_key="tissue", model=model, flip_average=flip_average, refine=refine,
                     mask_key="brain_mask"),
    ])
    each = []
    for seed in seeds:
        head, brain, head_affine = t1_in_synthetic_head(image, truth, affine, seed)
        labels, _ = synthetic_head(truth, affine, seed=seed)
        head_truth = torch.where(brain.bool(), labels, torch.zeros((), dtype=labels.dtype))
        out = pipeline(make_sample({"image": head}, affine=head_affine))
        scores = {name: dice(out["tissue"], head_truth, v) for v, name in TISSUE_NAMES.items()}
        scores["brain_mask"] = dice(out["brain_mask"], brain, 1)
        each.append(scores)
    names = [*TISSUE_NAMES.values(), "brain_mask"]
    return {"heads": {name: float(np.mean([e[name] for e in each])) for name in names}, "heads_each": each,
            "seeds": list(seeds), "flip_average": flip_average, "refine": refine}


def evaluate_mask(model: torch.nn.Module, seeds: Sequence[int] = HELD_OUT_HEAD_SEEDS, resolution: int = 1,
                  min_separation: float = EVAL_MIN_SEPARATION) -> dict:
    """Brain-mask Dice on held-out synthetic heads (2 mm) and on the MNI T1 inside synthetic heads.

    Synthetic heads are scored twice: with random means at least ``min_separation`` apart (every
    layer visible, as in training) and with independent means (``any_contrast``), where some
    draws give two layers the same intensity so that their boundary is not in the image at all.
    """
    from ..data.sample_data import sample_brain

    strip = SkullStrip("image", mask_key="brain_mask", model=model, apply=False)
    bundled = sample_brain()
    synthetic: dict[str, list[float]] = {"separated": [], "any_contrast": []}
    for seed in seeds:
        labels, head_affine = synthetic_head(bundled["label"], bundled["label_meta"]["affine"].numpy(), seed=seed)
        for name, separation in (("separated", min_separation), ("any_contrast", 0.0)):
            sample = make_sample({"label": labels}, affine=head_affine)
            sample["sample_index"] = seed
            generated = Compose([
                RandLabelsToImage(num_labels=len(HEAD_LABELS), std=(0.0, 0.05), min_separation=separation),
                RandBiasField("image", coefficients=0.3), RandNoise("image", std=0.02)], seed=seed)(sample)
            synthetic[name].append(dice(strip(generated)["brain_mask"], brain_mask_of(labels), 1))
    image, truth, affine = mni_tissue(resolution)
    real = []
    for seed in seeds:
        head, brain, head_affine = t1_in_synthetic_head(image, truth, affine, seed)
        real.append(dice(strip(make_sample({"image": head}, affine=head_affine))["brain_mask"], brain, 1))
    return {"synthetic_heads": float(np.mean(synthetic["separated"])), "synthetic_each": synthetic["separated"],
            "min_separation": min_separation,
            "synthetic_heads_any_contrast": float(np.mean(synthetic["any_contrast"])),
            "synthetic_any_contrast_each": synthetic["any_contrast"],
            "mni_t1_in_synthetic_head": float(np.mean(real)), "mni_each": real}


def t1_in_synthetic_head(image: torch.Tensor, tissue: torch.Tensor, affine: np.ndarray,
                         seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A skull-stripped T1 ``[1, D, H, W]`` placed inside a synthetic head with T1-like layer intensities.

    Returns the head image, its brain mask (uint8) and its affine. The layers (extracerebral
    CSF, skull, scalp) get the :data:`HEAD_T1` intensities relative to the white-matter median.
    """
    labels, head_affine = synthetic_head(tissue, affine, seed=seed)
    brain = brain_mask_of(labels)
    white = float(image[tissue == 3].median())
    head = torch.zeros(labels.shape, dtype=torch.float32)
    for value, level in HEAD_T1.items():
        head[labels == value] = level * white
    placed = torch.zeros(labels.shape, dtype=torch.float32)
    offset = [(n - m) // 2 for n, m in zip(labels.shape[1:], image.shape[1:])]
    placed[(slice(None), *(slice(o, o + m) for o, m in zip(offset, image.shape[1:])))] = image
    return torch.where(brain.bool(), placed, head), brain, head_affine


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the metrics of one task as JSON."""
    parser = argparse.ArgumentParser(prog="python -m gpuprep.models.evaluate", description=__doc__)
    parser.add_argument("--task", required=True, choices=["brain-tissue", "brain-mask"])
    parser.add_argument("--weights", default=None, help="checkpoint path (default: the shipped weights)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(HELD_OUT_HEAD_SEEDS),
                        help="brain-mask: synthetic-head seeds (default 10001-10010)")
    parser.add_argument("--no-flip-average", dest="flip_average", action="store_false",
                        help="brain-tissue: predict without averaging over the left-right mirror")
    parser.add_argument("--no-refine", dest="refine", action="store_false",
                        help="brain-tissue: take the network's argmax, without the intensity refinement")
    parser.add_argument("--real-heads", type=Path, default=None,
                        help="brain-mask: folder of real whole heads NAME.nii.gz (never trained on)")
    parser.add_argument("--peer-masks", type=Path, default=None,
                        help="brain-mask: folder of NAME_majority.nii.gz (scripts/peer_brain_masks.py)")
    parser.add_argument("--heads", nargs="+", default=None, help="names of the real heads (default: all)")
    parser.add_argument("--qc", type=Path, default=None, help="write a montage of the worst real head here")
    parser.add_argument("--no-synthetic", action="store_true", help="brain-mask: only the real heads")
    parser.add_argument("--input", choices=["brain", "masked", "head"], default="brain",
                        help="brain-tissue: the skull-stripped T1 as it is (default), with its nonzero voxels as "
                             "SegmentBrain's brain mask (masked), or inside synthetic heads 10001-10003, "
                             "skull-stripped first (head)")
    args = parser.parse_args(argv)
    model = load_pretrained(args.weights or args.task, device=args.device)
    if args.task == "brain-tissue" and args.input == "head":
        metrics = evaluate_tissue_in_heads(model, load_pretrained("brain-mask", device=args.device),
                                           flip_average=args.flip_average, refine=args.refine)
    elif args.task == "brain-tissue":
        metrics = evaluate_tissue(model, flip_average=args.flip_average, refine=args.refine,
                                  masked=args.input == "masked")
    else:
        metrics = {} if args.no_synthetic else evaluate_mask(model, args.seeds)
        if args.real_heads is not None:
            metrics["real_heads"] = evaluate_mask_on_heads(model, args.real_heads, args.peer_masks or args.real_heads,
                                                           names=args.heads, qc_dir=args.qc)
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
