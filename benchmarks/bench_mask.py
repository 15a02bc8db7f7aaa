"""ForegroundMask (Otsu threshold, largest component, hole filling) in gpuprep and scipy.ndimage, same input.

Inputs: the MNI152 1 mm T1 (197x233x189, nilearn's copy) and the bundled 2 mm sample T1. Rows:
gpuprep's ``ForegroundMask`` (default: Otsu, largest component, fill holes), its two morphology
steps alone, and the same two steps with ``scipy.ndimage.label`` / ``binary_fill_holes`` on the
same Otsu mask. The last column checks that both give the same mask (voxels that differ). Wall
and CPU seconds (the process's, all threads) are medians; on a shared machine trust the CPU column.

Run: ``python benchmarks/bench_mask.py [--threads 2] [--repeats 5] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.ndimage as ndi
import torch
from _common import machine_line, measure

import gpuprep as gp
from gpuprep.data.sample_data import sample_brain
from gpuprep.functional.morphology import fill_holes, largest_component
from gpuprep.functional.threshold import otsu_threshold
from gpuprep.models.mni import mni_t1


def scipy_mask(mask: np.ndarray) -> np.ndarray:
    """Largest 6-connected component, then hole filling, as ForegroundMask does."""
    labels, count = ndi.label(mask)
    largest = labels == 1 + np.argmax(np.bincount(labels.ravel())[1:]) if count else mask
    return ndi.binary_fill_holes(largest)


def bench_one(name: str, image: torch.Tensor, device: str, repeats: int) -> None:
    """Print the rows of one input."""
    image = image.to(device)
    sample = gp.make_sample({"image": image})
    transform = gp.ForegroundMask("image")
    mask = image[None] > otsu_threshold(image[None], bins=256).reshape(-1, 1, 1, 1, 1)
    array = mask[0, 0].cpu().numpy()
    ours = transform(sample)["foreground"][0].cpu().numpy().astype(bool)
    differ = int((ours != scipy_mask(array)).sum())

    def sync(result):
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    rows = [
        ("gpuprep ForegroundMask", lambda: sync(transform(sample))),
        ("gpuprep largest_component+fill", lambda: sync(fill_holes(largest_component(mask)))),
        ("scipy label+binary_fill_holes", lambda: scipy_mask(array)),
    ]
    for step, function in rows:
        seconds, mib = measure(function, repeats=repeats)
        shape = str(tuple(image.shape[-3:]))
        print(f"{name:16s} {shape:16s} {step:32s} {seconds:8.3f} {cpu_seconds(function, repeats):8.3f} "
              f"{mib:6.0f} {differ:7d}")


def cpu_seconds(function, repeats: int) -> float:
    """Median CPU time (all threads of this process): unlike wall time, it hardly moves on a shared machine."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t1_1mm, _ = mni_t1(1)
    inputs = {"MNI T1 1 mm": t1_1mm.reshape(1, *t1_1mm.shape[-3:]).float(),
              "sample T1 2 mm": sample_brain()["image"].float()}
    print(f"machine: {machine_line()}; device {args.device}; median of {args.repeats}")
    print(f"{'input':16s} {'shape':16s} {'step':32s} {'wall s':>8s} {'CPU s':>8s} {'MiB':>6s} {'differ':>7s}")
    for name, image in inputs.items():
        bench_one(name, image, args.device, args.repeats)


if __name__ == "__main__":
    main()
