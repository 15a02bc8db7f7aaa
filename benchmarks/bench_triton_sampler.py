"""Benchmark the fused Triton sampler against ``grid_sample`` on a materialised grid (CUDA only).

Input: random volumes ``[B, 1, S, S, S]`` (``S = 128`` by default), a float32 image (trilinear)
and a uint8 label map (nearest, random labels on blocks of 8^3 voxels), each sample with its own
random rotation about the centre, a small anisotropic scaling and a shift, padding ``"zeros"``.
Three ways are timed, per batch:

- ``torch``: :func:`gpuprep.functional.resample_general.general_batched`, what ``resample`` runs
  today for distinct maps: it builds the ``[B, S, S, S, 3]`` grid and the inside mask, then calls
  ``grid_sample`` (labels go through float32 and back);
- ``grid_sample``: the same call on a grid built beforehand (as when a
  :class:`~gpuprep.functional.resample_general.GridCache` hands an image's grid to its labels);
- ``triton``: :func:`gpuprep.functional.fused_sampler_triton.sample_affine_triton`.

The table gives the median time per volume (ms, CUDA-synchronised, after a warm-up that also
compiles the kernel), the peak GPU memory the call allocates beyond its input, and the largest
difference from the torch path (labels: the number of differing voxels).

Usage::

    python benchmarks/bench_triton_sampler.py --device cuda            # batches 4 and 32, 128^3
    python benchmarks/bench_triton_sampler.py --device cuda --size 96 --batches 2 8 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def random_maps(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
    maps = np.tile(np.eye(4), (batch, 1, 1))
    centre = np.full(3, (size - 1) / 2)
    for m in maps:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        m[:3, :3] = (q * np.sign(np.diag(r))) @ np.diag(rng.uniform(0.9, 1.1, 3))
        m[:3, 3] = centre - m[:3, :3] @ centre + rng.uniform(-5, 5, 3)
    return maps


def timed(function: Callable[[], torch.Tensor], repeats: int) -> tuple[float, float, torch.Tensor]:
    """Median seconds per call (synchronised), peak extra GPU MiB, and the last result."""
    result = function()  # warm-up (and Triton's compilation)
    torch.cuda.synchronize()
    del result
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for repeat in range(repeats):
        start = time.perf_counter()
        result = function()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if repeat < repeats - 1:
            del result
    peak = (torch.cuda.max_memory_allocated() - baseline) / 2**20
    return statistics.median(times), peak, result


def bench_one(volume: torch.Tensor, maps: np.ndarray, mode: str, repeats: int) -> list[str]:
    from gpuprep.functional.fused_sampler_triton import sample_affine_triton
    from gpuprep.functional.resample_general import _grid_and_mask, general_batched

    out_shape = tuple(volume.shape[2:])
    work = volume if volume.is_floating_point() else volume.float()
    grid, _ = _grid_and_mask(maps, out_shape, out_shape, work.dtype, volume.device)
    interpolation = "bilinear" if mode == "linear" else "nearest"
    runs = {
        "torch": lambda: general_batched(volume, maps, out_shape, mode, "zeros"),
        "grid_sample": lambda: F.grid_sample(work, grid, mode=interpolation, padding_mode="border",
                                             align_corners=True),
        "triton": lambda: sample_affine_triton(volume, maps, out_shape, mode=mode, padding_mode="zeros"),
    }
    results = {name: timed(run, repeats) for name, run in runs.items()}
    reference, fused = results["torch"][2], results["triton"][2]
    if volume.is_floating_point():
        difference = f"max |diff| {(fused - reference).abs().max().item():.2e}"
    else:
        difference = f"{int((fused != reference).sum().item())} voxels differ"
    batch = volume.shape[0]
    line = ", ".join(f"{name} {seconds * 1e3 / batch:7.3f} ms ({peak:7.1f} MiB)"
                     for name, (seconds, peak, _) in results.items())
    speedup = results["torch"][0] / results["triton"][0]
    kind = "image float32 linear" if volume.is_floating_point() else "labels uint8 nearest"
    return [f"B={batch:3d} {kind:21s} {line}; triton {speedup:.1f}x faster than torch; {difference}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        sys.exit(f"bench_triton_sampler compares CUDA kernels: it needs --device cuda and a GPU "
                 f"(got --device {args.device}, CUDA available: {torch.cuda.is_available()})")
    try:
        import triton
    except ImportError:
        sys.exit("bench_triton_sampler needs triton (it ships with the CUDA builds of torch)")
    device = torch.device(args.device)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, triton {triton.__version__}, "
          f"{args.size}^3, ms per volume (peak extra GPU memory of the call), median of {args.repeats}")
    rng = np.random.default_rng(0)
    generator = torch.Generator(device=device).manual_seed(0)
    for batch in args.batches:
        shape = (batch, 1, args.size, args.size, args.size)
        maps = random_maps(rng, batch, args.size)
        image = torch.rand(shape, device=device, generator=generator)
        # Labels constant on blocks of 8^3 voxels (random noise would put a boundary at every voxel).
        coarse = torch.randint(0, 5, (batch, 1, *[max(args.size // 8, 1)] * 3), device=device, generator=generator)
        labels = F.interpolate(coarse.float(), size=shape[2:], mode="nearest").to(torch.uint8)
        for volume, mode in ((image, "linear"), (labels, "nearest")):
            for line in bench_one(volume, maps, mode, args.repeats):
                print(line, flush=True)
        del image, labels
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
