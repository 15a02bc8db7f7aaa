"""Benchmark N4 bias-field correction: gpuprep against SimpleITK (and ANTsPy when installed), same input, same process.

Known fields: the MNI152 2009a T1 at 1 mm (nilearn) multiplied by a known smooth field, three
kinds and several seeds each:

- ``RandBiasField``: gpuprep's own augmentation (TorchIO's polynomial field, coefficients 0.5);
- ``quadratic``: ``exp(a x^2 + b y + c x z + d z^2)`` with random coefficients in [-0.3, 0.3];
- ``±30 %``: ``1 + 0.3 r`` with ``r`` an oblique linear ramp from -1 to 1 over the head.

Every method gets the same biased image and the template's brain mask, and runs at ITK's
default settings (shrink 4, 4 levels of 50 iterations, 4 control points, threshold 0.001,
200 bins, FWHM 0.15, Wiener noise 0.01); ANTsPy runs at its own defaults (spline distance
200 mm, tolerance 1e-7) with shrink 4. Reported per case: the correlation of the recovered log
field with the true one inside the brain, the coefficient of variation (CoV) of white-matter
intensities (WM from the template's tissue map) before and after, gpuprep's field against
SimpleITK's (correlation), and the wall time of the whole correction (shrink, fit, full-resolution
field and division).

Real scan: nibabel's ``anatomical.nii`` (a real, uncorrected T1, 2 mm). The mask is the Otsu
foreground for every method and shrink is 2 (the image is 33 x 41 x 25). WM is the voxels that
a 3-class k-means of the masked intensities puts in the brightest class after *every*
correction (and before), so that no method chooses its own WM.

Usage::

    python benchmarks/bench_bias.py                  # CPU, 2 threads, 3 seeds per field kind
    python benchmarks/bench_bias.py --device cuda --seeds 2
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from _common import machine_line, mni_t1_and_tissue

SHRINK = 4
ITERATIONS = 50  # per level, ITK's default


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-ants", action="store_true", help="leave ANTsPy out even when it is installed")
    return parser.parse_args()


def known_field(kind: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The true log field of ``kind`` on ``shape`` (float64)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    if kind == "quadratic":
        a, b, c, d = rng.uniform(-0.3, 0.3, size=4)
        return a * x**2 + b * y + c * x * z + d * z**2
    if kind == "±30 %":
        direction = rng.normal(size=3)
        ramp = direction[0] * x + direction[1] * y + direction[2] * z
        return np.log(1.0 + 0.3 * ramp / np.abs(ramp).max())
    import gpuprep as gp

    ones = gp.make_sample({"image": torch.ones((1, *shape))})
    field = gp.RandBiasField("image", coefficients=0.5, p=1.0, seed=seed)(ones)["image"][0]
    return np.log(field.double().numpy())


def variation(image: np.ndarray, region: np.ndarray) -> float:
    values = image[region]
    return float(values.std() / values.mean())


def correlation(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    return float(np.corrcoef(a[region], b[region])[0, 1])


def timed(function: Callable[..., np.ndarray], *args, **kwargs) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    log_field = function(*args, **kwargs)
    return time.perf_counter() - start, log_field


def gpuprep_log_field(image: np.ndarray, mask: np.ndarray, device: str, shrink: int = SHRINK,
                      levels: int = 4) -> np.ndarray:
    """The whole transform (field and division) on one sample; returns the log field."""
    import gpuprep as gp

    sample = gp.make_sample({"image": torch.from_numpy(image)[None].to(device),
                             "mask": torch.from_numpy(mask.astype(np.uint8))[None].to(device)}, labels=["mask"])
    out = gp.BiasFieldCorrection("image", mask_key="mask", shrink=shrink, levels=levels, field_key="field")(sample)
    return out["field"][0].log().cpu().numpy()


def simpleitk_log_field(image: np.ndarray, mask: np.ndarray, shrink: int = SHRINK, levels: int = 4) -> np.ndarray:
    import SimpleITK as sitk

    full = sitk.GetImageFromArray(image)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([ITERATIONS] * levels)
    corrector.Execute(sitk.Shrink(full, [shrink] * 3),
                      sitk.Shrink(sitk.GetImageFromArray(mask.astype(np.uint8)), [shrink] * 3))
    log_field = corrector.GetLogBiasFieldAsImage(full)
    sitk.GetArrayFromImage(full / sitk.Exp(log_field))  # the division, as the others do it
    return sitk.GetArrayFromImage(log_field)


def ants_log_field(image: np.ndarray, mask: np.ndarray, shrink: int = SHRINK, levels: int = 4) -> np.ndarray:
    import ants

    field = ants.n4_bias_field_correction(ants.from_numpy(image), mask=ants.from_numpy(mask.astype(np.float32)),
                                          shrink_factor=shrink, return_bias_field=True,
                                          convergence={"iters": [ITERATIONS] * levels, "tol": 1e-7})
    return np.log(np.maximum(field.numpy(), 1e-12))


def methods(device: str, with_simpleitk: bool, with_ants: bool) -> dict[str, Callable]:
    chosen: dict[str, Callable] = {"gpuprep": lambda i, m, **k: gpuprep_log_field(i, m, device, **k)}
    if with_simpleitk:
        chosen["SimpleITK"] = simpleitk_log_field
    if with_ants:
        chosen["ANTsPy"] = ants_log_field
    return chosen


def known_fields_table(args: argparse.Namespace, chosen: dict[str, Callable]) -> list[dict]:
    t1, tissue, _ = mni_t1_and_tissue(1)
    brain, white = tissue > 0, tissue == 3
    t1 = np.maximum(t1, 0.0).astype(np.float32)
    rows = []
    for kind in ("RandBiasField", "quadratic", "±30 %"):
        for seed in range(args.seeds):
            truth = known_field(kind, t1.shape, seed)
            biased = (t1 * np.exp(truth)).astype(np.float32)
            row = {"field": kind, "seed": seed, "cov_before": variation(biased, white)}
            fields = {}
            for name, function in chosen.items():
                seconds, log_field = timed(function, biased, brain)
                fields[name] = log_field
                row[name] = {"time": seconds, "corr": correlation(log_field, truth, brain),
                             "cov": variation(biased / np.exp(log_field), white)}
            if "SimpleITK" in fields:
                row["parity"] = correlation(fields["gpuprep"], fields["SimpleITK"], brain)
            rows.append(row)
            print_row(row, chosen)
    return rows


def print_row(row: dict, chosen: dict[str, Callable]) -> None:
    cells = [f"{row['field']} #{row['seed']}", f"{row['cov_before']:.4f}"]
    for name in chosen:
        cells += [f"{row[name]['corr']:.4f}", f"{row[name]['cov']:.4f}", f"{row[name]['time']:.2f}"]
    if "SimpleITK" in chosen:
        cells += [f"{row['parity']:.4f}", f"{row['SimpleITK']['time'] / row['gpuprep']['time']:.1f}x"]
    print("| " + " | ".join(cells) + " |", flush=True)


def kmeans_brightest(values: np.ndarray, classes: int = 3, rounds: int = 50) -> np.ndarray:
    """Which of ``values`` fall in the brightest of ``classes`` 1-D k-means classes (deterministic start)."""
    centres = np.percentile(values, np.linspace(15, 85, classes))
    for _ in range(rounds):
        nearest = np.abs(values[:, None] - centres[None]).argmin(axis=1)
        centres = np.array([values[nearest == k].mean() if np.any(nearest == k) else centres[k]
                            for k in range(classes)])
    return nearest == centres.argmax()


def real_scan_table(chosen: dict[str, Callable]) -> None:
    """WM CoV on a real scan, at ITK's 4 levels and at 2 (whose finest mesh, ~35 mm, suits the 66 mm field of view)."""
    import nibabel as nib
    from nibabel.testing import data_path
    from skimage.filters import threshold_otsu

    image = np.ascontiguousarray(nib.load(os.path.join(data_path, "anatomical.nii")).get_fdata(dtype=np.float32))
    mask = image > threshold_otsu(image)
    print(f"\nReal scan: nibabel anatomical.nii {image.shape} at 2 mm, Otsu mask ({mask.sum()} voxels), shrink 2\n")
    print("| levels | consensus WM voxels | uncorrected WM CoV | " + " | ".join(f"{n} WM CoV | {n} s" for n in chosen)
          + " |\n|" + "---|" * (3 + 2 * len(chosen)))
    for levels in (4, 2):
        corrected, times = {"uncorrected": image}, {}
        for name, function in chosen.items():
            times[name], log_field = timed(function, image, mask, shrink=2, levels=levels)
            corrected[name] = image / np.exp(log_field)
        white = mask.copy()
        for version in corrected.values():
            inside = np.zeros_like(mask)
            inside[mask] = kmeans_brightest(version[mask])
            white &= inside
        cells = [str(levels), str(int(white.sum())), f"{variation(image, white):.4f}"]
        cells += [f"{variation(corrected[n], white):.4f} | {times[n]:.2f}" for n in chosen]
        print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
        with_simpleitk = True
    except ImportError:  # the GPU machine: gpuprep alone
        with_simpleitk = False
    try:
        import ants  # noqa: F401

        with_ants = not args.skip_ants
    except ImportError:
        with_ants = False
    chosen = methods(args.device, with_simpleitk, with_ants)
    print(f"# N4 bias-field correction, {machine_line()}, device {args.device}\n")
    gpuprep_log_field(np.ones((16, 16, 16), np.float32), np.ones((16, 16, 16), bool), args.device)  # warm-up
    header = ["field", "WM CoV before"]
    for name in chosen:
        header += [f"{name} corr", f"{name} WM CoV", f"{name} s"]
    if "SimpleITK" in chosen:
        header += ["gpuprep vs SimpleITK field", "speed-up vs SimpleITK"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    rows = known_fields_table(args, chosen)
    if rows:
        summary(rows, chosen)
    batch_table(args)
    real_scan_table(chosen)


def summary(rows: list[dict], chosen: dict[str, Callable]) -> None:
    print("\nMeans over all cases:\n")
    print("| method | field corr | WM CoV after | time (s) |\n|---|---|---|---|")
    for name in chosen:
        corr = np.mean([r[name]["corr"] for r in rows])
        cov = np.mean([r[name]["cov"] for r in rows])
        seconds = np.median([r[name]["time"] for r in rows])
        print(f"| {name} | {corr:.4f} | {cov:.4f} | {seconds:.2f} (median) |")
    before = np.mean([r["cov_before"] for r in rows])
    print(f"\nWM CoV before: {before:.4f}")
    if "SimpleITK" in chosen:
        ratios = [r["SimpleITK"]["time"] / r["gpuprep"]["time"] for r in rows]
        print(f"gpuprep vs SimpleITK: speed-up {min(ratios):.1f}-{max(ratios):.1f}x (median {np.median(ratios):.1f}x), "
              f"mean field correlation {np.mean([r['parity'] for r in rows]):.4f}")


def batch_table(args: argparse.Namespace, size: int = 4) -> None:
    """``size`` biased brains (RandBiasField seeds) corrected in one batch against one by one, per sample."""
    import gpuprep as gp

    t1, tissue, _ = mni_t1_and_tissue(1)
    t1 = np.maximum(t1, 0.0).astype(np.float32)
    images = np.stack([t1 * np.exp(known_field("RandBiasField", t1.shape, seed)) for seed in range(size)])
    brain = torch.from_numpy((tissue > 0).astype(np.uint8))[None]
    samples = [gp.make_sample({"image": torch.from_numpy(image.astype(np.float32))[None].to(args.device),
                               "mask": brain.to(args.device)}, labels=["mask"]) for image in images]
    transform = gp.BiasFieldCorrection("image", mask_key="mask")
    start = time.perf_counter()
    singles = [transform(sample)["image"] for sample in samples]
    one_by_one = (time.perf_counter() - start) / size
    start = time.perf_counter()
    batch = transform(gp.collate(samples))["image"]
    batched = (time.perf_counter() - start) / size
    difference = max(float((batch[i] - singles[i]).abs().max() / singles[i].abs().max()) for i in range(size))
    print(f"\nBatch of {size} 1 mm brains on {args.device}: {batched:.2f} s per sample batched, "
          f"{one_by_one:.2f} s one by one; largest difference batch vs singles {difference:.1e} (relative)")


if __name__ == "__main__":
    main()
