"""Benchmark the denoising transforms against their scipy / scikit-image references.

Input: the MNI152 1 mm T1 template bundled with nilearn (197 x 233 x 189, intensities in
[0, 1]) as float32, plus Gaussian noise of standard deviation 0.05 (fixed seed). Every
denoiser runs through its dictionary transform on one sample ``[1, D, H, W]`` and its
reference runs on the same NumPy array; the table reports the median wall time of a few
runs, the speed-up and the largest absolute difference between the two outputs.

Non-local means and the wavelet reference are slow in pure CPU code, so those rows may use a
centred crop (``--crop``, 96^3 by default for the classic pixelwise NLM; the table says which
shape each row used).

Usage::

    python benchmarks/bench_denoise.py            # CPU, 2 threads, the full table
    python benchmarks/bench_denoise.py --threads 4 --device cuda --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import scipy.ndimage as ndi
import torch

import gpuprep as gp
from gpuprep.transforms.denoise import (
    AnisotropicDiffusion,
    GaussianDenoise,
    MedianDenoise,
    NonLocalMeans,
    WaveletDenoise,
)

NOISE = 0.05


def load_input(seed: int = 0) -> np.ndarray:
    from nilearn.datasets import load_mni152_template

    volume = load_mni152_template(resolution=1).get_fdata(dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, NOISE, size=volume.shape).astype(np.float32)
    return np.ascontiguousarray(volume + noise)


def crop(volume: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return volume
    starts = [(s - size) // 2 for s in volume.shape]
    return np.ascontiguousarray(volume[tuple(slice(a, a + size) for a in starts)])


def timed(function: Callable[[], object], repeats: int, warm_up: bool = True) -> tuple[float, object]:
    """Median wall time of ``repeats`` runs (after one warm-up run), and the last result."""
    result = function() if warm_up else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def perona_malik_numpy(image: np.ndarray, iterations: int, kappa: float, gamma: float) -> np.ndarray:
    """MedPy's anisotropic_diffusion (option 1, unit spacing), written out in NumPy (float32)."""
    out = np.array(image, dtype=np.float32, copy=True)
    deltas = [np.zeros_like(out) for _ in range(3)]
    for _ in range(iterations):
        for axis in range(3):
            head = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
            deltas[axis][head] = np.diff(out, axis=axis)
        fluxes = [np.exp(-((d / kappa) ** 2)) * d for d in deltas]
        for axis in range(3):
            tail = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
            fluxes[axis][tail] = np.diff(fluxes[axis], axis=axis)
        out += gamma * np.sum(fluxes, axis=0)
    return out


def cases(args) -> list[tuple[str, str, int | None, Callable, Callable]]:
    """(name, reference name, crop, gpuprep transform, reference function on a NumPy volume)."""
    from skimage.restoration import denoise_nl_means, denoise_wavelet, estimate_sigma

    def wavelet_reference(v):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return denoise_wavelet(v, method="BayesShrink", mode="soft", wavelet="db1", channel_axis=None)

    def nlm_reference(fast: bool):
        return lambda v: denoise_nl_means(
            v, patch_size=3, patch_distance=2, h=float(estimate_sigma(v)), fast_mode=fast, channel_axis=None
        )

    scipy_gauss, scipy_median = "scipy.ndimage.gaussian_filter", "scipy.ndimage.median_filter"
    skimage_nlm = "skimage denoise_nl_means"
    nlm = {"patch_size": 3, "patch_distance": 2}
    return [
        ("GaussianDenoise sigma=1 mm", scipy_gauss, None, GaussianDenoise("image", sigma=1.0),
         lambda v: ndi.gaussian_filter(v, 1.0)),
        ("GaussianDenoise sigma=2 mm", scipy_gauss, None, GaussianDenoise("image", sigma=2.0),
         lambda v: ndi.gaussian_filter(v, 2.0)),
        ("MedianDenoise r=1 (3^3)", scipy_median, None, MedianDenoise("image", radius=1),
         lambda v: ndi.median_filter(v, size=3)),
        ("MedianDenoise r=2 (5^3)", scipy_median, None, MedianDenoise("image", radius=2),
         lambda v: ndi.median_filter(v, size=5)),
        ("WaveletDenoise BayesShrink db1", "skimage denoise_wavelet", None, WaveletDenoise("image"),
         wavelet_reference),
        ("AnisotropicDiffusion 5 it", "NumPy (MedPy's scheme)", None,
         AnisotropicDiffusion("image", iterations=5, kappa=0.1, gamma=0.1),
         lambda v: perona_malik_numpy(v, 5, 0.1, 0.1)),
        ("NonLocalMeans fast s=3 d=2 (exact exp)", skimage_nlm, args.crop, NonLocalMeans("image", **nlm),
         nlm_reference(True)),
        ("NonLocalMeans fast s=3 d=2 (skimage exp)", skimage_nlm, args.crop,
         NonLocalMeans("image", **nlm, exact_exp=False), nlm_reference(True)),
        ("NonLocalMeans classic s=3 d=2", skimage_nlm, args.classic_crop,
         NonLocalMeans("image", **nlm, fast_mode=False, exact_exp=False), nlm_reference(False)),
    ]  # fmt: skip


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of gpuprep (median)")
    parser.add_argument("--reference-repeats", type=int, default=1, help="timed runs of the reference")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--crop", type=int, default=None, help="crop side for the fast NLM rows")
    parser.add_argument("--classic-crop", type=int, default=96, help="crop side for the classic NLM row")
    parser.add_argument("--only", default=None, help="run only rows whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    volume = load_input()

    rows = []
    for name, reference_name, size, transform, reference in cases(args):
        if args.only and args.only.lower() not in name.lower():
            continue
        data = crop(volume, size)
        sample = gp.make_sample({"image": torch.from_numpy(data)[None].to(device)})
        ours_s, out = timed(lambda t=transform, s=sample: t(s), args.repeats)
        ref_s, expected = timed(lambda r=reference, d=data: r(d), args.reference_repeats, warm_up=False)
        difference = float(np.abs(out["image"][0].cpu().numpy() - expected).max())
        rows.append((name, reference_name, "x".join(map(str, data.shape)), ours_s, ref_s, difference))
        print(f"  {name}: {ours_s:.3f} s vs {ref_s:.3f} s", flush=True)

    device_text = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print()
    print(
        f"Machine: {platform.machine()} {platform.system()} | CPU: {cpu_name()} | torch threads: "
        f"{args.threads} | device: {device_text} | torch {torch.__version__} | input: MNI152 1 mm T1 "
        f"float32 + N(0, {NOISE}) noise (intensities in [0, 1])"
    )
    print()
    print("| denoiser | reference | shape | gpuprep s | reference s | speed-up | max abs diff |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, reference_name, shape, ours_s, ref_s, difference in rows:
        print(
            f"| {name} | {reference_name} | {shape} | {ours_s:.3f} | {ref_s:.3f} | "
            f"{ref_s / ours_s:.1f}x | {difference:.2e} |"
        )


if __name__ == "__main__":
    main()
