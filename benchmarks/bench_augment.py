"""Batched augmentation in gpuprep against per-sample MONAI and TorchIO, same process and input.

RandAffine (rotate ±15°, scale ±10 %) -> RandFlip -> RandBiasField -> RandGamma -> RandNoise on a
batch of 4 image + label volumes of 128^3 (the MNI152 1 mm T1 and its tissue labels, cropped).
gpuprep transforms the whole batch in one call (each sample with its own parameters); MONAI and
TorchIO 1.2 transform the samples one by one. Reported: median seconds per volume.

Run: ``python benchmarks/bench_augment.py [--threads 2] [--repeats 5] [--device cpu|cuda] [--batch 4]
[--skip-torchio]``. On CUDA MONAI transforms each sample on the GPU too; ``--batch 32`` is the
size of nnU-Net's published figure (13.5 ms per batch of 32 x 128^3 on an A100).
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np
import torch
from _common import machine_line, measure, mni_t1_and_tissue

import gpuprep as gp

BATCH = 4
SHAPE = (128, 128, 128)


def volumes(batch: int = BATCH) -> tuple[list[torch.Tensor], list[torch.Tensor], np.ndarray]:
    t1, labels, affine = mni_t1_and_tissue(1)
    start = [(n - s) // 2 for n, s in zip(t1.shape, SHAPE)]
    crop = tuple(slice(a, a + s) for a, s in zip(start, SHAPE))
    image = torch.from_numpy(np.ascontiguousarray(t1[crop]))[None]
    label = torch.from_numpy(np.ascontiguousarray(labels[crop]))[None]
    return [image * (1 + 0.01 * i) for i in range(batch)], [label] * batch, affine


def gpuprep_runner(images, labels, affine, device):
    keys = ["image", "label"]
    pipeline = gp.Compose([
        gp.RandAffine(keys, rotate=15, scale=0.1),
        gp.RandFlip(keys, axes=(0, 1, 2), p=0.5),
        gp.RandBiasField("image", coefficients=0.5, order=3),
        gp.RandGamma("image", log_gamma=(-0.3, 0.3)),
        gp.RandNoise("image", std=(0, 0.1)),
    ], seed=0)
    batch = gp.collate([gp.make_sample({"image": i.to(device), "label": lab.to(device)}, affine=affine)
                        for i, lab in zip(images, labels)])

    def run():
        out = pipeline(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def monai_runner(images, labels, affine, device="cpu"):
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandBiasFieldd,
        RandFlipd,
        RandGaussianNoised,
    )

    keys = ["image", "label"]
    angle = math.radians(15)
    pipeline = Compose([
        RandAffined(keys, prob=1.0, rotate_range=(angle, angle, angle), scale_range=(0.1, 0.1, 0.1),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys, prob=0.5, spatial_axis=2),
        RandBiasFieldd("image", prob=1.0, coeff_range=(-0.5, 0.5), degree=3),
        RandAdjustContrastd("image", prob=1.0, gamma=(math.exp(-0.3), math.exp(0.3))),
        RandGaussianNoised("image", prob=1.0, std=0.1),
    ])
    pipeline.set_random_state(0)
    images, labels = [i.to(device) for i in images], [lab.to(device) for lab in labels]

    def run():
        out = [pipeline({"image": i, "label": lab}) for i, lab in zip(images, labels)]
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def torchio_runner(images, labels, affine):
    import torchio as tio

    pipeline = tio.Compose([
        tio.RandomAffine(scales=0.1, degrees=15),
        tio.RandomFlip(axes=(0, 1, 2)),
        tio.RandomBiasField(coefficients=0.5, order=3),
        tio.RandomGamma(log_gamma=(-0.3, 0.3)),
        tio.RandomNoise(std=(0, 0.1)),
    ])
    subjects = [
        tio.Subject(image=tio.ScalarImage(tensor=i, affine=affine), label=tio.LabelMap(tensor=lab, affine=affine))
        for i, lab in zip(images, labels)
    ]

    def run():
        return [pipeline(subject) for subject in subjects]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--skip-torchio", action="store_true", help="also skips the elastic and motion table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    images, labels, affine = volumes(args.batch)
    import monai

    print(f"machine: {machine_line()}")
    print(f"input: batch of {args.batch} image+label volumes of {SHAPE}; {args.repeats} runs, median\n")
    rows = [
        (f"gpuprep {gp.__version__} (batched, {args.device})", gpuprep_runner(images, labels, affine, args.device)),
        (f"MONAI {monai.__version__} (per sample, {args.device})", monai_runner(images, labels, affine, args.device)),
    ]
    if not args.skip_torchio:
        import torchio

        rows.append((f"TorchIO {torchio.__version__} (per sample)", torchio_runner(images, labels, affine)))
    results = [(name, *measure(run, args.repeats)) for name, run in rows]
    ours = results[0][1]
    print("| pipeline | median s / volume | ms / batch | peak extra RSS MiB | gpuprep speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, memory in results:
        print(f"| {name} | {seconds / args.batch:.3f} | {1e3 * seconds:.1f} | {memory:.0f} | {seconds / ours:.1f}x |")
    if not args.skip_torchio:
        elastic_and_motion_on_one_brain(args.repeats)


def elastic_and_motion_on_one_brain(repeats: int) -> None:
    """RandElastic (alone, and fused with RandAffine) and RandMotion against TorchIO on a 1 mm brain with labels."""
    import torchio as tio

    t1, labels, affine = mni_t1_and_tissue(1)
    image, label = torch.from_numpy(t1)[None], torch.from_numpy(labels)[None]
    sample = gp.make_sample({"image": image, "label": label}, affine=affine)
    keys = ["image", "label"]
    ours = gp.RandElastic(keys, num_control_points=7, max_displacement=7.5, seed=0)
    fused = gp.Compose([gp.RandAffine(keys, rotate=10, scale=0.1),
                        gp.RandElastic(keys, num_control_points=7, max_displacement=7.5)], seed=0)
    subject = tio.Subject(image=tio.ScalarImage(tensor=image, affine=affine),
                          label=tio.LabelMap(tensor=label, affine=affine))
    theirs = tio.RandomElasticDeformation(num_control_points=7, max_displacement=7.5)
    motion = gp.RandMotion("image", degrees=10, translation=10, num_transforms=2, seed=0)
    their_motion = tio.RandomMotion(degrees=10, translation=10, num_transforms=2)
    print(f"\nelastic deformation and affine (image + labels) and motion (image) of one brain {tuple(t1.shape)}, "
          f"median of {repeats}:\n")
    rows = [("TorchIO 1.2 RandomElasticDeformation", lambda: theirs(subject)),
            ("gpuprep RandElastic", lambda: ours(sample)),
            ("gpuprep RandAffine + RandElastic (fused: one resampling)", lambda: fused(sample)),
            ("TorchIO 1.2 RandomMotion", lambda: their_motion(subject)),
            ("gpuprep RandMotion", lambda: motion(sample))]
    times = {name: measure(run, repeats)[0] for name, run in rows}
    print("| transform | s | speed-up over TorchIO |")
    print("|---|---:|---:|")
    for name, seconds in times.items():
        reference = times[rows[0][0]] if "Elastic" in name else times[rows[3][0]]
        print(f"| {name} | {seconds:.3f} | {reference / seconds:.1f}x |")


if __name__ == "__main__":
    main()
