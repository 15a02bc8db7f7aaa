"""The fused numba kernels against the torch paths they replace, beside the machine's memory bandwidth.

A batch of 4 MNI152 1 mm crops of 128^3 (float32 image, uint8 tissue labels), each with its own
random rotation (±15°) and scaling (±10 %), as ``RandAffine`` draws them. Resampled:

- **torch**: ``general_batched`` as ``resample`` ran it before the kernel: one sampling grid
  (``[B, D, H, W, 3]``, built once and shared through a ``GridCache``), ``grid_sample`` linear
  for the image and nearest for the labels, each followed by the inside mask;
- **numba**: ``sample_grid_rule_with_labels``: the image and the labels in one pass (same results:
  labels equal, images to 1e-5), the source coordinate of each voxel computed in the kernel.

Then the intensity chain RandBiasField -> RandGamma -> RandNoise on the image: the torch path
(``voxel_chain_torch``: one tensor per step, the transforms' own functions) against the numba
kernel (``apply_voxel_chain``: one pass), both drawing the same noise with torch's generator.

Beside them: the memory bandwidth (a 256 MiB ``Tensor.copy_``) and the time the kernels would
take if they only read the input once and wrote the output once at that bandwidth. Then the
first call's cost: numba compiling the kernels (a fresh ``NUMBA_CACHE_DIR``) and loading them
from its cache.

Run: ``python benchmarks/bench_kernels.py [--repeats 5]`` (1 and 2 threads)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine_line, measure, mni_t1_and_tissue

from gpuprep.functional.fused_sampler import sample_grid_rule_with_labels
from gpuprep.functional.intensity_chain import VoxelStep, apply_voxel_chain, draw_step_noise, voxel_chain_torch
from gpuprep.functional.resample_general import GridCache, general_batched

BATCH = 4
SHAPE = (128, 128, 128)


def batch_and_maps(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The image and label batches ``[4, 1, 128, 128, 128]`` and one random rotation/scaling map per sample."""
    t1, labels, _ = mni_t1_and_tissue(1)
    crop = tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(t1.shape, SHAPE))
    image = torch.from_numpy(np.ascontiguousarray(t1[crop]))[None, None].repeat(BATCH, 1, 1, 1, 1)
    label = torch.from_numpy(np.ascontiguousarray(labels[crop]))[None, None].repeat(BATCH, 1, 1, 1, 1)
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(BATCH):
        linear = np.eye(3)
        for axis, angle in enumerate(np.deg2rad(rng.uniform(-15, 15, 3))):
            i, j = [a for a in range(3) if a != axis]
            turn = np.eye(3)
            turn[[i, i, j, j], [i, j, i, j]] = [np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)]
            linear = linear @ turn
        linear = linear @ np.diag(rng.uniform(0.9, 1.1, 3))
        voxel_map = np.eye(4)
        voxel_map[:3, :3] = linear
        centre = (np.array(SHAPE) - 1) / 2
        voxel_map[:3, 3] = centre - linear @ centre
        maps.append(voxel_map)
    return image, label, np.stack(maps)


def torch_path(image, label, maps):
    cache = GridCache()
    return (general_batched(image, maps, SHAPE, "linear", "zeros", cache),
            general_batched(label, maps, SHAPE, "nearest", "zeros", cache))


def numba_path(image, label, maps):
    return sample_grid_rule_with_labels(image, label, maps, SHAPE, "zeros")


def intensity_chain(batch: int, seed: int = 0) -> list[VoxelStep]:
    """RandBiasField (order 3, coefficients 0.5), RandGamma (log gamma 0.3), RandNoise (std up to 0.1) steps."""
    rng = np.random.default_rng(seed)
    return [VoxelStep("bias", [True] * batch, np.zeros((batch, 0)), rng.uniform(-0.5, 0.5, (batch, 20)), 3),
            VoxelStep("gamma", [True] * batch, np.exp(rng.uniform(-0.3, 0.3, (batch, 1)))),
            VoxelStep("noise", [True] * batch, np.column_stack([np.zeros(batch), rng.uniform(0, 0.1, batch)]),
                      noise_seeds=list(range(batch)))]


def chain_timings(repeats: int) -> None:
    image, _, _ = batch_and_maps()
    steps = intensity_chain(BATCH)
    ours, theirs = apply_voxel_chain(image, steps), voxel_chain_torch(image, steps)
    error = ((ours - theirs).abs() / theirs.abs().clamp_min(1)).max().item()
    print(f"\nintensity chain (bias field, gamma, noise): max relative difference {error:.1e}\n")
    moved = 3 * image.numel() * image.element_size() / BATCH  # read the image and the noise, write the output
    print("| threads | torch path ms / volume | numba ms / volume | speed-up | of which drawing the noise ms | "
          "one pass at copy bandwidth ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rate = bandwidth(repeats)
        torch_s, _ = measure(lambda: voxel_chain_torch(image, steps), repeats)
        numba_s, _ = measure(lambda: apply_voxel_chain(image, steps), repeats)
        noise_s, _ = measure(lambda: draw_step_noise(image, steps), repeats)
        print(f"| {threads} | {1e3 * torch_s / BATCH:.1f} | {1e3 * numba_s / BATCH:.1f} | {torch_s / numba_s:.1f}x "
              f"| {1e3 * noise_s / BATCH:.1f} | {1e3 * moved / rate:.2f} |")


def bandwidth(repeats: int) -> float:
    """Bytes per second of a 256 MiB float32 copy (read + write counted)."""
    source = torch.rand(2**26)
    target = torch.empty_like(source)
    seconds, _ = measure(lambda: target.copy_(source), repeats)
    return 2 * source.numel() * source.element_size() / seconds


def timings(repeats: int) -> None:
    image, label, maps = batch_and_maps()
    ours, theirs = numba_path(image, label, maps), torch_path(image, label, maps)
    image_error = (ours[0] - theirs[0]).abs().max().item() / theirs[0].abs().max().item()
    print(f"equality: labels equal {torch.equal(ours[1], theirs[1])}, images max relative difference "
          f"{image_error:.1e}\n")
    moved = 2 * (image.numel() * image.element_size() + label.numel() * label.element_size()) / BATCH
    print("| threads | copy bandwidth GB/s | torch path ms / volume | numba ms / volume | speed-up | "
          "one read + one write ms / volume | numba vs that bound |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rate = bandwidth(repeats)
        torch_s, _ = measure(lambda: torch_path(image, label, maps), repeats)
        numba_s, _ = measure(lambda: numba_path(image, label, maps), repeats)
        bound = moved / rate
        print(f"| {threads} | {rate / 1e9:.1f} | {1e3 * torch_s / BATCH:.1f} | {1e3 * numba_s / BATCH:.1f} | "
              f"{torch_s / numba_s:.1f}x | {1e3 * bound:.2f} | {numba_s / BATCH / bound:.0f}x |")


_FIRST_CALL = """
import time, torch
start = time.perf_counter()
from bench_kernels import apply_voxel_chain, batch_and_maps, intensity_chain, numba_path
image, label, maps = batch_and_maps()
image, label = image[:, :, :32, :32, :32].contiguous(), label[:, :, :32, :32, :32].contiguous()
steps = intensity_chain(len(image))
ready = time.perf_counter()
numba_path(image, label, maps), apply_voxel_chain(image, steps)
first = time.perf_counter()
numba_path(image, label, maps), apply_voxel_chain(image, steps)
print(first - ready - (time.perf_counter() - first))
"""


def first_call_cost() -> None:
    """Seconds the first call adds (import of numba, compiling or loading the two kernels), cold then warm."""
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])}
        costs = []
        for _ in ("cold", "warm"):
            done = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True, text=True,
                                  check=True)
            costs.append(float(done.stdout.split()[-1]))
    print(f"\nfirst call (numba import + the image-and-labels and intensity-chain kernels): "
          f"{costs[0]:.1f} s compiling (empty NUMBA_CACHE_DIR), {costs[1]:.2f} s from numba's cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine_line()}")
    print(f"input: batch of {BATCH} image (float32) + label (uint8) volumes of {SHAPE}, one random rotation "
          f"and scaling per sample, zeros padding; {args.repeats} runs, median\n")
    start = time.perf_counter()
    timings(args.repeats)
    chain_timings(args.repeats)
    first_call_cost()
    print(f"\n(benchmark took {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
