"""gpuprep against the TorchIO 2.0 alpha, which cannot be installed beside TorchIO 1.2.

Run in its own environment (same torch build)::

    python3 -m venv /tmp/tio2 && . /tmp/tio2/bin/activate
    pip install torch==2.13.0 && pip install --pre torchio==2.0.0a2 && pip install -e . nilearn
    python benchmarks/bench_torchio2.py

Both libraries run in that one process on the same input: the preprocessing pipeline of
``bench_preprocess.py`` (TorchIO 2 without the Gaussian, as TorchIO 1.2) on the MNI152 1 mm T1 with
labels, and the augmentation pipeline of ``bench_augment.py`` on a batch of four 128^3 volumes,
which TorchIO 2 can transform as a batch (``SubjectsBatch``).
"""

from __future__ import annotations

import argparse
import warnings

import torch
from _common import machine_line, measure, mni_t1_and_tissue
from bench_augment import BATCH, SHAPE, gpuprep_runner, volumes
from bench_preprocess import gpuprep_pipeline


def torchio2_preprocess(t1, labels, affine):
    import torchio as tio

    pipeline = tio.Compose([
        tio.Reorient("RAS"),
        tio.Resample(1.5),
        tio.RescaleIntensity(out_min=0, out_max=1, percentile_low=0.5, percentile_high=99.5),
        tio.Standardize(masking_method=lambda x: x > 0),
        tio.CropOrPad((128, 128, 128)),
    ])

    def run():
        subject = tio.Subject(image=tio.ScalarImage(t1, affine=affine), label=tio.LabelMap(labels, affine=affine))
        return pipeline(subject)

    return run


def torchio2_augment(images, labels, affine):
    import torchio as tio

    pipeline = tio.Compose([
        tio.Affine(scales=(0.9, 1.1), degrees=(-15, 15), default_pad_value=0),
        tio.Flip(axes=(0, 1, 2), flip_probability=0.5),
        tio.BiasField(),
        tio.Gamma(log_gamma=(-0.3, 0.3)),
        tio.Noise(std=(0, 0.1)),
    ])
    subjects = [tio.Subject(image=tio.ScalarImage(i, affine=affine), label=tio.LabelMap(lab, affine=affine))
                for i, lab in zip(images, labels)]
    batch = tio.SubjectsBatch.from_subjects(subjects)

    def run():
        return pipeline(batch)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import torchio

    print(f"machine: {machine_line()}; TorchIO {torchio.__version__}\n")
    t1, labels, affine = mni_t1_and_tissue(1)
    t1, labels = torch.from_numpy(t1)[None], torch.from_numpy(labels)[None]
    rows = [
        ("preprocess, gpuprep plain linear, no Gaussian", gpuprep_pipeline("cpu", False, gaussian=False), 1),
        ("preprocess, TorchIO 2 (no Gaussian)", torchio2_preprocess(t1, labels, affine), 1),
    ]
    images, image_labels, crop_affine = volumes()
    augment = f"augment batch of {BATCH} x {SHAPE}"
    rows += [
        (f"{augment}, gpuprep", gpuprep_runner(images, image_labels, crop_affine, "cpu"), BATCH),
        (f"{augment}, TorchIO 2 (batched)", torchio2_augment(images, image_labels, crop_affine), BATCH),
    ]
    print("| pipeline | median s / volume |")
    print("|---|---:|")
    for name, run, per in rows:
        if name.startswith("preprocess, gpuprep"):
            seconds, _ = measure(lambda run=run: run(t1, labels, affine), args.repeats)
        else:
            seconds, _ = measure(run, args.repeats)
        print(f"| {name} | {seconds / per:.3f} |")


if __name__ == "__main__":
    main()
