"""Engines: run one function over many jobs, here, in a pool of processes, or on Ray or Dask.

:func:`map_jobs` is the one interface. ``function`` is a top-level (picklable) function of one
picklable job that returns a picklable result; results come back as they complete, so a caller
can show progress and stop early.

- ``engine="local"``, ``workers <= 1``: in this process, in order.
- ``engine="local"``, ``workers > 1``: a pool of ``workers`` processes, torch's threads shared
  among them (each gets ``threads // workers``, at least one). Workers are forked from a server
  process that imported torch and gpuprep once (``forkserver``, where the platform has it; else
  ``spawn``): no CUDA context or thread pool of this process is inherited, and a later pool
  starts at once. At most two jobs per worker are queued at a time. The
  workers ignore Ctrl-C: when the caller stops (Ctrl-C, an error, or it stops reading), queued
  jobs are cancelled and running ones finish, so no job is cut off halfway.
- ``engine="ray"`` / ``"dask"``: :func:`gpuprep.data.engines_distributed.map_with_ray` /
  ``map_with_dask`` (with CUDA, each Ray worker asks for ``1 / workers`` of a GPU).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from ..errors import ConfigError

ENGINES = ("local", "ray", "dask")
#: Jobs queued per worker of the local pool: enough to keep it busy, few enough to stop quickly.
QUEUED_PER_WORKER = 2

Job = TypeVar("Job")
Result = TypeVar("Result")


def map_jobs(function: Callable[[Job], Result], jobs: Iterable[Job], engine: str = "local", workers: int = 1,
             device: str = "cpu") -> Iterator[Result]:
    """Yield ``function(job)`` for every job, as they complete (see the module docstring).

    Parameters
    ----------
    function:
        A top-level function of one job (it must pickle for ``workers > 1`` and for Ray/Dask).
    jobs:
        The jobs (picklable).
    engine:
        ``"local"``, ``"ray"`` or ``"dask"``.
    workers:
        How many jobs run at once.
    device:
        Where the jobs compute (``"cpu"``, ``"cuda"``...): Ray workers reserve a share of a GPU for CUDA.

    Example
    -------
    >>> sorted(map_jobs(abs, [-2, 1, -3]))
    [1, 2, 3]
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {ENGINES}, got {engine!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"--workers must be a whole number of at least 1, got {workers!r}")
    if engine == "ray":
        from .engines_distributed import map_with_ray

        share = 1.0 / workers if str(device).startswith("cuda") else 0.0
        return map_with_ray(function, jobs, workers=workers, gpus_per_worker=share)
    if engine == "dask":
        from .engines_distributed import map_with_dask

        return map_with_dask(function, jobs, workers=workers)
    if workers <= 1:
        return (function(job) for job in jobs)
    return _map_pool(function, jobs, workers)


def _map_pool(function: Callable[[Job], Result], jobs: Iterable[Job], workers: int) -> Iterator[Result]:
    """The local engine with ``workers`` processes: results as they complete, queued jobs cancelled on exit."""
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    import torch

    threads = max(1, torch.get_num_threads() // workers)
    pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_start_worker, initargs=(threads,))
    waiting = iter(jobs)
    running: set[Future] = set()
    try:
        while True:
            for job in waiting:
                running.add(pool.submit(function, job))
                if len(running) >= workers * QUEUED_PER_WORKER:
                    break
            if not running:
                return
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _context() -> multiprocessing.context.BaseContext:
    """The forkserver context, its server importing what every job needs, where the platform has it; else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "gpuprep.data.run_jobs", "gpuprep.transforms"])
    return context


def _start_worker(threads: int) -> None:
    """Set up a pool worker: its share of torch's threads, and Ctrl-C left to the parent (see the module docstring)."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)

