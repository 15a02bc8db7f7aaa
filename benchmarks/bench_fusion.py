"""Fused versus step-by-step spatial preprocessing, and the resampler against its peers.

Part 1, with ``Compose(fuse=True)`` (one resampling) and ``Compose(fuse=False)`` (one per step):

- chain A: Orientation RAS -> Resample 1.5 mm -> CropOrPad 128^3 -> Flip on the MNI152 1 mm T1
  and its labels stored in LPS orientation (so reorientation really moves data). Each step alone
  is already a single cheap pass (exact flips/crops and one trilinear pass), so fusion mostly
  saves intermediate volumes here;
- chain B: a second contrast on an oblique grid (the T1 rotated by 10 degrees) brought onto
  the T1's grid with ResampleToReference, then Resample 1.5 mm -> CropOrPad 128^3: step by step
  that is two interpolations (the first one at full resolution), fused it is one.

Part 2: resampling the T1 from 1 mm to 1.5 mm alone: gpuprep's separable path versus
``torch.nn.functional.grid_sample`` (what a straightforward GPU port does), MONAI ``Spacing`` and
``scipy.ndimage.zoom`` (order 1), same input.

Run: ``python benchmarks/bench_fusion.py [--threads 2] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from _common import machine_line, measure, mni_t1_and_tissue

import gpuprep as gp
from gpuprep.functional.grid import normalized_theta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    t1, labels, affine = mni_t1_and_tissue(1)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip = np.eye(4)
    flip[:2, :2] = -np.eye(2)
    flip[:2, 3] = np.array(t1.shape[:2]) - 1
    lps_affine = affine @ flip  # same world image, voxel axes running L and P
    sample = gp.make_sample(
        {"image": torch.from_numpy(np.ascontiguousarray(t1[::-1, ::-1]))[None],
         "label": torch.from_numpy(np.ascontiguousarray(labels[::-1, ::-1]))[None]},
        affine=lps_affine,
    )
    assert gp.axcodes_of(lps_affine) == gp.axcodes_of(lps @ np.eye(4)) == "LPS"
    keys = ["image", "label"]
    steps = [gp.Orientation(keys, "RAS"), gp.Resample(keys, 1.5), gp.CropOrPad(keys, (128, 128, 128)),
             gp.Flip(keys, 0)]
    print(f"machine: {machine_line()}")
    print(f"input: MNI152 T1 + labels {t1.shape} at 1 mm; {args.repeats} runs, median\n")
    angle = np.deg2rad(10.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    two_contrasts = gp.make_sample(
        {"image": torch.from_numpy(t1)[None], "t2": torch.from_numpy(t1)[None]},
        affine={"image": affine, "t2": rotation @ affine},
    )
    chain_b = [gp.ResampleToReference("t2", reference_key="image"), gp.Resample("t2", 1.5),
               gp.CropOrPad("t2", (128, 128, 128))]
    print("| chain | fused s | step by step s | fusion speed-up |")
    print("|---|---:|---:|---:|")
    for name, chain, data in (("A: Orientation+Resample+CropOrPad+Flip, image+label", steps, sample),
                              ("B: ResampleToReference (oblique)+Resample+CropOrPad", chain_b, two_contrasts)):
        fused, _ = measure(lambda chain=chain, data=data: gp.Compose(chain, fuse=True)(data), args.repeats)
        unfused, _ = measure(lambda chain=chain, data=data: gp.Compose(chain, fuse=False)(data), args.repeats)
        print(f"| {name} | {fused:.3f} | {unfused:.3f} | {unfused / fused:.1f}x |")
    print()

    image = torch.from_numpy(t1)[None]
    batch = image[None]
    out_shape = tuple(round(n / 1.5) for n in t1.shape)
    resample = gp.Resample("image", 1.5, anti_aliasing=False)
    single = gp.make_sample({"image": image}, affine=affine)
    voxel_map = gp.get_history(resample(single))[0]["params"]["image"]["voxel_map"]
    theta = torch.from_numpy(normalized_theta(np.asarray(voxel_map), t1.shape, out_shape)).float()[None]

    def grid_sample():
        grid = F.affine_grid(theta, [1, 1, *out_shape], align_corners=True)
        return F.grid_sample(batch, grid, mode="bilinear", align_corners=True)

    from monai.data import MetaTensor
    from monai.transforms import Spacing
    from scipy import ndimage

    spacing = Spacing(pixdim=1.5, mode="bilinear")
    meta_image = MetaTensor(image, affine=torch.as_tensor(affine))
    rows = [
        ("gpuprep Resample (separable)", lambda: resample(single)),
        ("torch grid_sample (trilinear)", grid_sample),
        ("MONAI Spacing (bilinear)", lambda: spacing(meta_image)),
        ("scipy.ndimage.zoom (order 1)", lambda: ndimage.zoom(t1, 1 / 1.5, order=1, grid_mode=True, mode="nearest")),
    ]
    results = [(name, *measure(fn, args.repeats)) for name, fn in rows]
    print("| resample 1 mm -> 1.5 mm, linear | median s | peak extra RSS MiB | gpuprep speed-up |")
    print("|---|---:|---:|---:|")
    for name, seconds, memory in results:
        print(f"| {name} | {seconds:.3f} | {memory:.0f} | {seconds / results[0][1]:.1f}x |")


if __name__ == "__main__":
    main()
