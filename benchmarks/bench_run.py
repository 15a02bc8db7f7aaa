"""``gpuprep run`` over a folder of NIfTI files against plain MONAI and TorchIO loops, files per second.

Data: ``--files`` copies (default 32) of the MNI152 2009a 1 mm T1 (197x233x189), each shifted by a
few voxels and given its own intensity scale, offset and noise, written as int16 ``.nii.gz`` to a
temporary folder. Pipeline: the brain preset (``brain_mri_preprocessing``) without N4, since
neither MONAI nor TorchIO has N4: RAS, 1.5 mm, percentiles 0.5-99.5 to [0, 1], Otsu head mask with
holes filled, crop to the mask (4 voxels of margin), pad to a multiple of 16, z-scores inside the
mask; the image and the mask are written as ``.nii.gz``. The peers run the same steps, file to
file, in a plain loop (MONAI: ``LoadImaged`` ... ``SaveImaged``; TorchIO: ``ScalarImage`` ...
``save``; the Otsu mask by scikit-image in both), with the same number of workers (``map_jobs``'s
process pool when ``--workers`` > 1, its server started before any timing) in this process. Also
timed: ``gpuprep run --resume`` on the finished outputs (every file skipped), the preset with N4
(gpuprep only), and, when the engine is installed, Ray and Dask against local: first as
``gpuprep run --engine ray|dask`` alone, which starts a local cluster and stops it (cold), then
on a cluster already running (``ray.init`` in this process; a ``LocalCluster`` found through
``DASK_SCHEDULER_ADDRESS``), as on a real cluster, where starting it is not part of a run.

Run: ``python benchmarks/bench_run.py [--files 32] [--workers 1] [--threads 2] [--repeats 1] [--no-peers]
[--no-engines] [--n4]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _common import machine_line, mni_t1_and_tissue

from gpuprep.data.dataset_run import run_dataset
from gpuprep.data.engines import map_jobs
from gpuprep.transforms.presets import brain_mri_preprocessing


def make_files(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` shifted, rescaled, noisy int16 copies of the 1 mm MNI T1."""
    t1, _, affine = mni_t1_and_tissue(1)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        shifted = np.roll(t1, tuple(rng.integers(-4, 5, 3)), axis=(0, 1, 2))
        data = shifted * rng.uniform(700, 1100) + rng.uniform(0, 40) + rng.normal(0, 5, t1.shape)
        path = folder / f"sub-{index:03d}" / "anat" / f"sub-{index:03d}_T1w.nii.gz"
        path.parent.mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.clip(data, 0, 32767).astype(np.int16), affine), path)
        paths.append(path)
    return paths


def otsu_mask(volume: np.ndarray) -> np.ndarray:
    """Otsu's threshold with holes filled (as ``ForegroundMask``'s default, without the largest component)."""
    from scipy.ndimage import binary_fill_holes
    from skimage.filters import threshold_otsu

    return binary_fill_holes(volume > threshold_otsu(volume))


def monai_one(job: tuple[str, str]) -> None:
    """The preset's steps with MONAI, one file to its output folder."""
    from monai.transforms import (
        Compose,
        CropForegroundd,
        DivisiblePadd,
        EnsureChannelFirstd,
        Lambdad,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRangePercentilesd,
        Spacingd,
    )

    source, output = job
    steps = Compose([
        LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
        Spacingd("image", pixdim=1.5, mode="bilinear"),
        ScaleIntensityRangePercentilesd("image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        lambda d: {**d, "mask": d["image"].clone().copy_(torch.as_tensor(otsu_mask(d["image"][0].numpy()))[None])},
        CropForegroundd(["image", "mask"], source_key="mask", margin=4),
        DivisiblePadd(["image", "mask"], k=16),
        Lambdad("image", lambda x: (x - x[0][x[0] > 0].mean()) / x[0][x[0] > 0].std()),
        SaveImaged("image", output_dir=output, output_postfix="", separate_folder=False, resample=False,
                   print_log=False),
        SaveImaged("mask", output_dir=output, output_postfix="mask", separate_folder=False, resample=False,
                   output_dtype=np.uint8, print_log=False),
    ])
    steps({"image": source})


def torchio_one(job: tuple[str, str]) -> None:
    """The preset's steps with TorchIO, one file to its output folder."""
    import torchio as tio

    source, output = job
    subject = tio.Compose([tio.ToCanonical(), tio.Resample(1.5),
                           tio.RescaleIntensity(out_min_max=(0, 1), percentiles=(0.5, 99.5))])(
        tio.Subject(image=tio.ScalarImage(source)))
    mask = otsu_mask(subject["image"].numpy()[0])
    subject.add_image(tio.LabelMap(tensor=torch.as_tensor(mask[None], dtype=torch.uint8),
                                   affine=subject["image"].affine), "mask")
    bounds = np.argwhere(mask)
    low, high = np.maximum(bounds.min(0) - 4, 0), np.array(mask.shape) - np.minimum(bounds.max(0) + 5, mask.shape)
    crop = tio.Crop(tuple(int(v) for pair in zip(low, high) for v in pair))
    subject = tio.Compose([crop, tio.EnsureShapeMultiple(16, method="pad"),
                           tio.ZNormalization(masking_method="mask")])(subject)
    name = Path(source).name.replace(".nii.gz", "")
    subject["image"].save(Path(output) / f"{name}.nii.gz")
    subject["mask"].save(Path(output) / f"{name}_mask.nii.gz")


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def peer(function, paths: list[Path], output: Path, workers: int) -> float:
    jobs = [(str(p), str(output / p.parent.name)) for p in paths]
    for _, folder in jobs:
        Path(folder).mkdir(parents=True, exist_ok=True)
    return timed(lambda: list(map_jobs(function, jobs, workers=workers)))


@contextlib.contextmanager
def running_cluster(engine: str, workers: int):
    """A local Ray (``ray.init`` here) or Dask ``LocalCluster`` (address in ``DASK_SCHEDULER_ADDRESS``), started."""
    if engine == "ray":
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING")
        try:
            yield
        finally:
            ray.shutdown()
        return
    from distributed import LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        os.environ["DASK_SCHEDULER_ADDRESS"] = cluster.scheduler_address
        try:
            yield
        finally:
            del os.environ["DASK_SCHEDULER_ADDRESS"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs of each contender; the best counts")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--engines", action=argparse.BooleanOptionalAction, default=True, help="also time Ray and Dask")
    parser.add_argument("--n4", action="store_true", help="also time the full preset (with N4), gpuprep only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    work = Path(tempfile.mkdtemp(prefix="bench_run_"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    paths = make_files(work / "data", args.files)
    pipeline = work / "brain.yaml"
    brain_mri_preprocessing(bias_correction=False).to_yaml(pipeline)
    count, workers = args.files, args.workers
    print(f"{count} files (MNI 1 mm, int16 .nii.gz), {workers} worker(s), brain preset without N4")

    def line(name: str, seconds: float, reference: float | None = None) -> None:
        ratio = "" if reference is None else f"  ({reference / seconds:.2f}x)"
        print(f"  {name:<34s} {seconds:8.2f} s  {count / seconds:7.2f} files/s{ratio}", flush=True)

    if workers > 1:  # start the local pool's server once, outside every timing (the peers use the same pool)
        list(map_jobs(abs, range(workers), workers=workers))
    times: dict[str, list[float]] = {"gpuprep run": [], "MONAI loop": [], "TorchIO loop": []}
    for repeat in range(args.repeats):  # interleaved, so that a busy spell of the machine hits every contender
        start = time.perf_counter()
        summary = run_dataset(pipeline, [work / "data"], work / f"gpuprep{repeat}", workers=workers, progress=False)
        times["gpuprep run"].append(time.perf_counter() - start)
        if args.peers:
            times["MONAI loop"].append(peer(monai_one, paths, work / f"monai{repeat}", workers))
            times["TorchIO loop"].append(peer(torchio_one, paths, work / f"torchio{repeat}", workers))
    first = min(times["gpuprep run"])
    for name, seconds in times.items():
        if seconds:
            line(f"{name} (best of {len(seconds)})", min(seconds))
    slowest = summary.slowest_steps(4)
    print("    gpuprep's slowest steps per file: " + ", ".join(f"{n} {mean * 1000:.0f} ms" for n, _, mean in slowest))
    if args.peers:
        faster = min(min(times["MONAI loop"]), min(times["TorchIO loop"]))
        print(f"  gpuprep run vs the faster peer: {faster / first:.2f}x")
    line("gpuprep run --resume (all skipped)", timed(run_dataset, pipeline, [work / "data"], work / "gpuprep0",
                                                     workers=workers, resume=True, progress=False), first)
    for engine in ("ray", "dask") if args.engines else ():
        for running in (False, True):
            label = f"gpuprep run --engine {engine}" + (", cluster running" if running else ", cold")
            try:
                with running_cluster(engine, max(workers, 1)) if running else contextlib.nullcontext():
                    seconds = timed(run_dataset, pipeline, [work / "data"], work / f"{engine}{running}",
                                    workers=max(workers, 1), engine=engine, progress=False)
            except (ImportError, RuntimeError) as error:
                print(f"  {label}: not run ({' '.join(str(error).split())[:150]})")
                continue
            line(label, seconds)
            print(f"    overhead vs local: {seconds - first:+.2f} s ({100 * (seconds - first) / first:+.0f} %)")
    if args.n4:
        n4 = work / "brain_n4.yaml"
        brain_mri_preprocessing().to_yaml(n4)
        line("gpuprep run, preset with N4", timed(run_dataset, n4, [work / "data"], work / "n4", workers=workers,
                                                  progress=False))


if __name__ == "__main__":
    main()
