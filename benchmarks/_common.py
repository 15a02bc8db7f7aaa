"""Shared helpers of the benchmarks: machine description, timing, peak memory, MNI data."""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import torch


def machine_line() -> str:
    """One line naming the CPU, core count, torch threads and versions."""
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(function: Callable[[], object], repeats: int = 5, warmup: int = 1) -> tuple[float, float]:
    """Median wall time (s) of ``function`` and the peak resident memory it added (MiB)."""
    for _ in range(warmup):
        function()
    baseline = _rss_bytes()
    peak = [baseline]
    running = [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    running[0] = False
    watcher.join()
    return statistics.median(times), (peak[0] - baseline) / 2**20


def mni_t1_and_tissue(resolution: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MNI152 2009a T1 (float32), a tissue label map (uint8: 0 bg, 1 CSF, 2 GM, 3 WM) and the affine."""
    from gpuprep.models.evaluate import mni_tissue

    image, labels, affine = mni_tissue(resolution)
    return image[0].numpy(), labels[0].numpy(), affine
