"""The standard preprocessing pipeline in gpuprep, MONAI and TorchIO, in one process, same input.

Orientation RAS -> Resample 1.5 mm (image linear, label nearest) -> RescaleIntensity percentiles
0.5-99.5 -> ZNormalize (nonzero) -> Gaussian sigma 1 voxel -> CropOrPad 128^3, on the MNI152
1 mm T1 (197x233x189) with its tissue label map, already in memory (file reading is timed
separately by bench_gzip.py). TorchIO has no deterministic Gaussian filter, so its pipeline runs
without it (as in the issue's numbers).

Run: ``python benchmarks/bench_preprocess.py [--threads 2] [--repeats 5] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import warnings

import torch
from _common import machine_line, measure, mni_t1_and_tissue

import gpuprep as gp


def gpuprep_pipeline(device: str, anti_aliasing: bool = True, gaussian: bool = True):
    keys = ["image", "label"]
    pipeline = gp.Compose([
        gp.Orientation(keys, "RAS"),
        gp.Resample(keys, 1.5, anti_aliasing=anti_aliasing),
        gp.RescaleIntensity("image", percentiles=(0.5, 99.5), out_range=(0, 1)),
        gp.ZNormalize("image", mask="nonzero"),
        *([gp.GaussianDenoise("image", sigma=1.0, units="voxel")] if gaussian else []),
        gp.CropOrPad(keys, (128, 128, 128)),
    ])

    def run(t1, labels, affine):
        sample = gp.make_sample({"image": t1.to(device), "label": labels.to(device)}, affine=affine)
        out = pipeline(sample)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def monai_pipeline():
    from monai.data import MetaTensor
    from monai.transforms import (
        Compose,
        GaussianSmoothd,
        NormalizeIntensityd,
        Orientationd,
        ResizeWithPadOrCropd,
        ScaleIntensityRangePercentilesd,
        Spacingd,
    )

    keys = ["image", "label"]
    pipeline = Compose([
        Orientationd(keys, axcodes="RAS"),
        Spacingd(keys, pixdim=1.5, mode=("bilinear", "nearest")),
        ScaleIntensityRangePercentilesd("image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        NormalizeIntensityd("image", nonzero=True),
        GaussianSmoothd("image", sigma=1.0),
        ResizeWithPadOrCropd(keys, spatial_size=(128, 128, 128)),
    ])

    def run(t1, labels, affine):
        aff = torch.as_tensor(affine)
        return pipeline({"image": MetaTensor(t1, affine=aff), "label": MetaTensor(labels, affine=aff)})

    return run


def torchio_pipeline():
    import torchio as tio

    pipeline = tio.Compose([
        tio.ToCanonical(),
        tio.Resample(1.5),
        tio.RescaleIntensity(out_min_max=(0, 1), percentiles=(0.5, 99.5)),
        tio.ZNormalization(masking_method=lambda x: x > 0),
        tio.CropOrPad((128, 128, 128)),
    ])

    def run(t1, labels, affine):
        subject = tio.Subject(image=tio.ScalarImage(tensor=t1, affine=affine),
                              label=tio.LabelMap(tensor=labels, affine=affine))
        return pipeline(subject)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    t1, labels, affine = mni_t1_and_tissue(1)
    t1 = torch.from_numpy(t1)[None]
    labels = torch.from_numpy(labels)[None]
    print(f"machine: {machine_line()}")
    print(f"input: MNI152 T1 {tuple(t1.shape[1:])} at 1 mm + tissue labels; {args.repeats} runs, median")
    import monai
    import torchio

    ours = f"gpuprep {gp.__version__} ({args.device})"
    # (name, runner, the gpuprep row doing the same work)
    rows = [
        (f"{ours}, anti-aliased resampling (default)", gpuprep_pipeline(args.device), None),
        (f"{ours}, plain linear resampling", gpuprep_pipeline(args.device, anti_aliasing=False), None),
        (f"{ours}, plain linear, no Gaussian", gpuprep_pipeline(args.device, False, gaussian=False), None),
        (f"MONAI {monai.__version__}", monai_pipeline(), 1),
        (f"TorchIO {torchio.__version__} (no Gaussian)", torchio_pipeline(), 2),
    ]
    results = []
    for name, run, _ in rows:
        seconds, memory = measure(lambda run=run: run(t1, labels, affine), repeats=args.repeats)
        results.append((name, seconds, memory))
    print()
    print("| pipeline | median s / volume | peak extra RSS MiB | gpuprep doing the same work is faster by |")
    print("|---|---:|---:|---:|")
    for (name, seconds, memory), (_, _, same) in zip(results, rows):
        ratio = "" if same is None else f"{seconds / results[same][1]:.1f}x"
        print(f"| {name} | {seconds:.3f} | {memory:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
