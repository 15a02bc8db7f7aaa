"""Which compiled copy of a kernel runs: the parallel one only on the main thread with two or more threads."""

from __future__ import annotations

import threading
import types

import pytest
import torch

from gpuprep.functional import numba_threads
from gpuprep.functional.numba_threads import jit_pair, pick_kernel

numba = pytest.importorskip("numba")


def _double(x):
    return 2 * x


def _in_a_thread(function):
    seen = []
    worker = threading.Thread(target=lambda: seen.append(function()))
    worker.start()
    worker.join()
    return seen[0]


def test_pick_kernel_serial_for_one_thread_and_for_other_threads_without_a_thread_safe_layer(monkeypatch):
    module = types.SimpleNamespace(run=lambda: "parallel", run_serial=lambda: "serial")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert pick_kernel(module, "run")() == "parallel"
        safe = numba_threads._thread_safe_layer()
        assert safe == (numba.threading_layer() in ("omp", "tbb"))
        assert _in_a_thread(lambda: pick_kernel(module, "run")()) == ("parallel" if safe else "serial")
        monkeypatch.setattr(numba_threads, "_thread_safe_layer", lambda: False)  # workqueue
        assert _in_a_thread(lambda: pick_kernel(module, "run")()) == "serial"
        torch.set_num_threads(1)
        assert pick_kernel(module, "run")() == "serial"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.filterwarnings("ignore:.*parallel=True.*")  # nothing to parallelise in this function
def test_jit_pair_compiles_both_copies_under_their_own_names():
    parallel, serial = jit_pair(_double)
    assert parallel(3) == serial(3) == 6
    assert serial.py_func.__name__ == "_double_serial" and parallel.py_func.__name__ == "_double"
