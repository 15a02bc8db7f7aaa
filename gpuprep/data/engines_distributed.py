"""The distributed engines of ``gpuprep run``: one job function mapped over many jobs on Ray or Dask.

Both take a top-level, picklable ``function(job) -> result`` and picklable jobs and results
(dataclasses), run the function once per job in worker processes and yield the results in the
order the jobs finish. Errors that ``function`` catches and returns come back as results; anything
else that stops a job (an uncaught exception, a dead worker, a lost cluster) raises
:class:`EngineError` naming the engine.

- :func:`map_with_ray`: Ray Data with a fixed pool of actors, each of which unpickles ``function``
  once (a pipeline or model it holds is set up once per worker), optionally with a share of a GPU;
  on the cluster at ``RAY_ADDRESS`` (``ray://head:10001``) when that is set, else a local Ray.
- :func:`map_with_dask`: ``dask.distributed`` on the scheduler at ``DASK_SCHEDULER_ADDRESS``
  (``tcp://scheduler:8786``) when that is set, else a local cluster of single-threaded processes.

On a real cluster every worker needs gpuprep (and the module that defines ``function``, its jobs
and results) in the caller's version; a local cluster gets the caller's import path. Ray and Dask
are optional (``pip install "gpuprep[ray]"``, ``"gpuprep[dask]"``): without them the engines
raise :class:`~gpuprep.errors.MissingDependencyError` with that command.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from ..errors import ConfigError, GpuprepError, MissingDependencyError, short_repr

#: How to install the engines' dependencies with gpuprep.
RAY_INSTALL, DASK_INSTALL = 'pip install "gpuprep[ray]"', 'pip install "gpuprep[dask]"'

#: How often a job is retried after its worker process died (Ray: actor restarts and task
#: retries; Dask: the scheduler's ``allowed-failures`` of a local cluster) before the run fails.
WORKER_RETRIES = 3

#: The most characters of an engine's error message that :class:`EngineError` repeats.
MESSAGE_LIMIT = 500

Job = TypeVar("Job")
Result = TypeVar("Result")


class EngineError(GpuprepError, RuntimeError):
    """A distributed engine failed: a worker died, the cluster went away or a job raised an exception."""


def _require(module: str, engine: str, install: str) -> ModuleType:
    """Import ``module`` for ``engine``, or raise :class:`~gpuprep.errors.MissingDependencyError` with ``install``.

    Example
    -------
    >>> _require("no_such_engine_module", "ray", RAY_INSTALL)
    Traceback (most recent call last):
    ...
    gpuprep.errors.MissingDependencyError: --engine ray needs no_such_engine_module (No module named \
'no_such_engine_module'); install it with: pip install "gpuprep[ray]"
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        message = f"--engine {engine} needs {module} ({error}); install it with: {install}"
        raise MissingDependencyError(message) from None


def _check_workers(workers: int, gpus_per_worker: float = 0.0) -> None:
    """Raise :class:`~gpuprep.errors.ConfigError` unless ``workers >= 1`` and ``gpus_per_worker >= 0``.

    Example
    -------
    >>> _check_workers(0)
    Traceback (most recent call last):
    ...
    gpuprep.errors.ConfigError: workers must be an integer >= 1, got 0
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if not gpus_per_worker >= 0:
        raise ConfigError(f"gpus_per_worker must be >= 0, got {gpus_per_worker!r}")


def _exception_text(error: BaseException) -> str:
    """``"Type: first line of the message"`` of an exception, at most :data:`MESSAGE_LIMIT` characters.

    Example
    -------
    >>> _exception_text(ValueError("no voxels\\nin case0"))
    'ValueError: no voxels'
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _engine_error(engine: str, error: BaseException) -> EngineError:
    """An :class:`EngineError` naming ``engine``, with the type and first line of ``error``.

    Example
    -------
    >>> str(_engine_error("dask", KeyError("worker-1")))
    "the dask engine failed: KeyError: 'worker-1'"
    """
    return EngineError(f"the {engine} engine failed: {_exception_text(error)}")


def _job_error(engine: str, job: object, error: str) -> EngineError:
    """An :class:`EngineError` naming ``engine``, the job and the exception (``"Type: message"``) it raised.

    Example
    -------
    >>> str(_job_error("ray", {"path": "a.nii.gz"}, "ValueError: empty"))
    "the ray engine failed: job {'path': 'a.nii.gz'} raised ValueError: empty"
    """
    return EngineError(f"the {engine} engine failed: job {short_repr(job, 120)} raised {error}")


def _local_python_path() -> str:
    """``PYTHONPATH`` for local workers: the caller's import path, less the interpreter's own folders.

    Example
    -------
    >>> import os, sys
    >>> all(folder in sys.path or folder in os.environ.get("PYTHONPATH", "")
    ...     for folder in _local_python_path().split(os.pathsep) if folder)
    True
    """
    own = [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    folders = [*os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    for entry in sys.path:
        folder = Path(entry or os.curdir).resolve()
        if folder.is_dir() and not any(folder.is_relative_to(prefix) for prefix in own):
            folders.append(str(folder))
    return os.pathsep.join(dict.fromkeys(folder for folder in folders if folder))


class _RayJobRunner:
    """Ray Data's callable class: one instance per actor holds ``function`` and runs the jobs of each batch.

    A batch holds pickled jobs and their indices; the result of each job comes back pickled, or
    the exception it raised as ``"Type: message"`` (so that the caller can name the job).
    """

    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.function = function

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        from ray import cloudpickle

        results, errors = [], []
        for job in batch["job"]:
            try:
                results.append(cloudpickle.dumps(self.function(pickle.loads(bytes(job)))))
                errors.append("")
            except Exception as error:
                results.append(b"")
                errors.append(_exception_text(error))
        return {"index": np.asarray(batch["index"]), "result": np.array(results, dtype=object),
                "error": np.array(errors, dtype=object)}


def _start_ray(ray: ModuleType, workers: int) -> None:
    """Connect to the Ray cluster at ``RAY_ADDRESS``, or start a local Ray with ``workers`` CPUs.

    The local Ray's workers get the caller's import path (:func:`_local_python_path`).
    """
    address = os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            runtime_env = {"env_vars": {"PYTHONPATH": _local_python_path()}}
            ray.init(num_cpus=workers, include_dashboard=False, runtime_env=runtime_env,
                     logging_level=logging.WARNING)
    except Exception as error:  # no cluster at RAY_ADDRESS, or a local Ray that cannot start
        raise _engine_error("ray", error) from error


@contextmanager
def _ray_session(ray: ModuleType, workers: int, gpus_per_worker: float) -> Iterator[None]:
    """Use the Ray of this process if it is initialised, else start one (:func:`_start_ray`) and shut it down after."""
    if ray.is_initialized():
        yield
        return
    local = not os.environ.get("RAY_ADDRESS")
    _start_ray(ray, workers)
    try:
        gpus = ray.cluster_resources().get("GPU", 0) if local else gpus_per_worker
        if gpus_per_worker > 0 and gpus < gpus_per_worker:
            raise ConfigError(f"gpus_per_worker={gpus_per_worker} but the local Ray sees {gpus} GPUs")
        yield
    finally:
        ray.shutdown()


@contextmanager
def _quiet_ray_data(ray: ModuleType) -> Iterator[None]:
    """Ray Data without progress bars and INFO logs while the engine runs (the caller shows its own progress)."""
    context = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    shown, level = context.enable_progress_bars, logger.level
    context.enable_progress_bars = False
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        context.enable_progress_bars = shown
        logger.setLevel(level)


def map_with_ray(
    function: Callable[[Job], Result], jobs: Iterable[Job], workers: int, gpus_per_worker: float = 0.0
) -> Iterator[Result]:
    """Run ``function`` on every job on Ray Data, one actor per worker; yield each result as it is ready.

    Parameters
    ----------
    function:
        A top-level (picklable) ``function(job) -> result``. Each actor unpickles it once, so a
        pipeline or model it holds is built once per worker. Errors it catches and returns come
        back as results.
    jobs:
        Picklable jobs; read into a list before the first job starts.
    workers:
        The number of actors (and the CPUs of a local Ray that this call starts).
    gpus_per_worker:
        The GPUs each actor reserves (``0.5``: two actors share a GPU); 0 runs CPU actors only.

    Returns
    -------
    An iterator over the results, in the order in which the jobs finish. The Ray that runs them:
    the one this process has initialised, else the cluster at ``RAY_ADDRESS``, else a local Ray
    with ``workers`` CPUs; one that this call started (or connected to) is shut down at the end.

    Raises
    ------
    EngineError
        A job raised, its worker died more than :data:`WORKER_RETRIES` times, or Ray failed.
    MissingDependencyError
        Ray Data is not installed.

    Example
    -------
    .. code-block:: python

        from gpuprep.data.engines_distributed import map_with_ray

        results = list(map_with_ray(process_case, jobs, workers=4, gpus_per_worker=0.5))
    """
    _check_workers(workers, gpus_per_worker)
    _require("ray.data", "ray", RAY_INSTALL)
    return _ray_results(sys.modules["ray"], function, list(jobs), workers, gpus_per_worker)


def _ray_results(ray: ModuleType, function: Callable[[Job], Result], jobs: list[Job], workers: int,
                 gpus_per_worker: float) -> Iterator[Result]:
    """The generator behind :func:`map_with_ray`: a session, the dataset of pickled jobs, the results as they come."""
    if not jobs:
        return
    from ray import cloudpickle

    payloads = [{"index": index, "job": cloudpickle.dumps(job)} for index, job in enumerate(jobs)]
    # Ray Data retries a task whose actor died forever by default; these bound it. Ray 2.51+ warns that
    # such remote arguments will become named parameters (2.64), so the warning is silenced here.
    retries = {"max_restarts": WORKER_RETRIES, "max_task_retries": WORKER_RETRIES}
    resources = {"num_gpus": gpus_per_worker} if gpus_per_worker > 0 else {}
    with _ray_session(ray, workers, gpus_per_worker), _quiet_ray_data(ray):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
            dataset = ray.data.from_items(payloads).map_batches(
                _RayJobRunner, fn_constructor_args=(function,), batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=min(workers, len(jobs))), **resources, **retries)
        yield from _ray_rows(iter(dataset.iter_rows()), jobs)


def _ray_rows(rows: Iterator[dict[str, Any]], jobs: list[Any]) -> Iterator[Any]:
    """The results of Ray Data's output rows, or :class:`EngineError`; ``rows`` is closed before Ray shuts down."""
    try:
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as error:
                raise _engine_error("ray", error) from error
            if row["error"]:
                raise _job_error("ray", jobs[int(row["index"])], row["error"])
            yield pickle.loads(row["result"])
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


@contextmanager
def _dask_client(distributed: ModuleType, workers: int) -> Iterator[Any]:
    """A client of the scheduler at ``DASK_SCHEDULER_ADDRESS``, or of a local cluster that is closed after."""
    address = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            client = distributed.Client(address)
        except Exception as error:  # no scheduler there (a timeout after distributed.comm.timeouts.connect)
            raise _engine_error("dask", error) from error
        with client:
            yield client
        return
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": WORKER_RETRIES}):
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        yield client


def map_with_dask(function: Callable[[Job], Result], jobs: Iterable[Job], workers: int) -> Iterator[Result]:
    """Run ``function`` on every job on ``dask.distributed``; yield each result as it is ready.

    Parameters
    ----------
    function:
        A top-level (picklable) ``function(job) -> result``. Errors it catches and returns come
        back as results.
    jobs:
        Picklable jobs; all are submitted at once (``Client.map``).
    workers:
        The worker processes of the local cluster (one thread each); unused with
        ``DASK_SCHEDULER_ADDRESS``, where the cluster's own workers run the jobs.

    Returns
    -------
    An iterator over the results, in the order in which the jobs finish.

    Raises
    ------
    EngineError
        A job raised, its worker died more often than the scheduler allows (a local cluster:
        :data:`WORKER_RETRIES`), or the scheduler is unreachable or went away.
    MissingDependencyError
        ``dask.distributed`` is not installed.

    Example
    -------
    .. code-block:: python

        from gpuprep.data.engines_distributed import map_with_dask

        results = list(map_with_dask(process_case, jobs, workers=4))
    """
    _check_workers(workers)
    distributed = _require("dask.distributed", "dask", DASK_INSTALL)
    return _dask_results(distributed, function, list(jobs), workers)


def _dask_results(distributed: ModuleType, function: Callable[[Job], Result], jobs: list[Job],
                  workers: int) -> Iterator[Result]:
    """The generator behind :func:`map_with_dask`: a client, one future per job, the results as they come."""
    if not jobs:
        return
    with _dask_client(distributed, workers) as client:
        futures = client.map(function, jobs, pure=False)
        index = {future.key: position for position, future in enumerate(futures)}
        try:
            finished = distributed.as_completed(futures)
            while True:
                try:
                    future = next(finished)
                except StopIteration:
                    break
                except Exception as error:
                    raise _engine_error("dask", error) from error
                yield _dask_result(future, jobs[index[future.key]])
        finally:
            with suppress(Exception):  # a client that lost its scheduler cannot cancel; the error is raised already
                client.cancel(futures)


def _dask_result(future: Any, job: object) -> Any:
    """The result of a finished future, or :class:`EngineError`: the job raised, or its workers died."""
    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    if future.status == "error":
        error = future.exception()
        if not isinstance(error, (KilledWorker, CommClosedError)):
            raise _job_error("dask", job, _exception_text(error)) from error
    try:
        return future.result()
    except Exception as error:
        raise _engine_error("dask", error) from error
