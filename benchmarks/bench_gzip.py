"""Time loading a ``.nii.gz``: gpuprep with ISA-L, gpuprep with zlib, and nibabel.

The image is the MNI152 1 mm T1 template bundled with nilearn (197 x 233 x 189 voxels), saved to
a temporary ``.nii.gz`` by nibabel (as uint8 and as float32). Each loader runs ``--repeats``
times after one warm-up, the loaders taking turns so that changes in machine load hit all of
them alike. The table shows the median wall time and the speed-up over
``nibabel.load(path).get_fdata()`` and over the like-for-like nibabel route to what
``read_image`` returns: the native-dtype array as a C-contiguous tensor ``[1, D, H, W]``.
(``np.asarray(img.dataobj)`` alone is faster, as it returns a Fortran-ordered array and
leaves the reordering to whoever makes a tensor of it.)

Run::

    python benchmarks/bench_gzip.py --repeats 15
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from gpuprep.io import gzip_fast, read_image


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else whatever platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_ms(functions: dict, repeats: int) -> dict:
    """Median wall time of each function in ms; runs interleave so load changes hit all alike."""
    times: dict = {name: [] for name in functions}
    for function in functions.values():
        function()  # warm-up: page cache, allocator
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def loaders(path: Path) -> dict:
    def gpuprep_isal():
        with gzip_fast.use_backend("isal"):
            return read_image(path)

    def gpuprep_zlib():
        with gzip_fast.use_backend("zlib"):
            return read_image(path)

    return {
        "gpuprep read_image (isal)": gpuprep_isal,
        "gpuprep read_image (zlib)": gpuprep_zlib,
        "nibabel get_fdata()": lambda: nib.load(path).get_fdata(),
        "nibabel asarray(dataobj)": lambda: np.asarray(nib.load(path).dataobj),
        "nibabel -> contiguous tensor": lambda: torch.from_numpy(np.asarray(nib.load(path).dataobj))[
            None
        ].contiguous(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import isal
    from nilearn.datasets import load_mni152_template

    load = f", 1-minute load average {os.getloadavg()[0]:.1f}"
    print(f"machine: {platform.platform()}, CPU: {cpu_name()}, {os.cpu_count()} logical cores{load}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__} "
        f"(threads: {torch.get_num_threads()}), numpy {np.__version__}, nibabel {nib.__version__}, "
        f"isal {isal.__version__}"
    )
    template = load_mni152_template(resolution=1)
    print(f"image: MNI152 T1 1 mm, shape {template.shape}; median of {args.repeats} runs\n")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for dtype in (np.uint8, np.float32):
            # nilearn's template holds intensities in [0, 1]; spread them over 0-255 for uint8.
            values = np.asarray(template.dataobj, dtype=np.float32)
            data = np.round(values * 255).astype(dtype) if dtype == np.uint8 else values
            path = Path(folder) / f"mni_{np.dtype(dtype).name}.nii.gz"
            nib.save(nib.Nifti1Image(data, template.affine, dtype=dtype), path)
            gz_mb, raw_mb = path.stat().st_size / 1e6, data.nbytes / 1e6
            size = f"{np.dtype(dtype).name}, {gz_mb:.1f} MB gz / {raw_mb:.1f} MB raw"
            times = median_ms(loaders(path), args.repeats)
            for name, ms in times.items():
                rows.append((size, name, ms, times["nibabel get_fdata()"] / ms,
                             times["nibabel -> contiguous tensor"] / ms))
    print("| file | loader | median ms | speed-up vs nibabel get_fdata() | speed-up vs nibabel -> tensor |")
    print("|---|---|---:|---:|---:|")
    for size, name, ms, ratio, ratio_tensor in rows:
        print(f"| {size} | {name} | {ms:.1f} | {ratio:.2f}x | {ratio_tensor:.2f}x |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
