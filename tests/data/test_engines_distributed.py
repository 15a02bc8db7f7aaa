"""The Ray and Dask engines of ``gpuprep run`` on real local clusters of two CPU workers.

The job reads a small NIfTI file with nibabel and returns its voxel sum; every engine must give
the results of a local loop (in any order), return the errors the job catches as results, and
raise :class:`EngineError` naming the engine when a job raises or its worker process dies (a
job that raises on Ray is checked in this process, on the actor's runner and the driver's
reading of its rows: a third Ray dataset would add seconds of actor start-up). Each cluster is
started once per test and serves all of its checks, rather than once per module in a fixture:
pytest-xdist may hand the tests of one module to different processes, which would start a
module's cluster in each. The session logic (start, connect, shut down only one's own) is
tested on a stand-in ``ray`` module that starts nothing.

Dask workers import this module for its job functions, so it imports gpuprep (and with it torch)
only inside the tests: a worker then starts in about a second instead of several.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gpuprep.errors import ConfigError, MissingDependencyError

N_FILES = 6


@dataclass(frozen=True)
class SumJob:
    path: str


@dataclass(frozen=True)
class SumResult:
    path: str
    total: float | None = None
    shape: tuple[int, ...] = ()
    error: str = ""


def voxel_sum(job: SumJob) -> SumResult:
    """The job: the voxel sum of one NIfTI file; a file it cannot read comes back as an error result."""
    try:
        data = np.asarray(nib.load(job.path).dataobj, dtype=np.float64)
    except Exception as error:
        return SumResult(job.path, error=type(error).__name__)
    return SumResult(job.path, float(data.sum()), data.shape)


def raise_error(job: SumJob) -> SumResult:
    raise ValueError(f"no voxels in {Path(job.path).name}")


def kill_worker(job: SumJob) -> SumResult:
    os._exit(3)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> list[SumJob]:
    folder = tmp_path_factory.mktemp("engines")
    rng = np.random.default_rng(5)
    jobs = []
    for index in range(N_FILES):
        path = folder / f"case{index}.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(size=(4, 5, 3 + index)).astype(np.float32), np.eye(4)), path)
        jobs.append(SumJob(str(path)))
    return [*jobs, SumJob(str(folder / "missing.nii.gz"))]


@pytest.fixture
def engines():
    """``gpuprep.data.engines_distributed``, imported when a test runs (see the module's docstring)."""
    from gpuprep.data import engines_distributed

    return engines_distributed


def _sorted(results) -> list[SumResult]:
    return sorted(results, key=lambda result: result.path)


def _check_results(run, jobs: list[SumJob]) -> None:
    """Results equal the local loop's (the error the job returns included)."""
    iterator = run(voxel_sum, jobs)
    assert iter(iterator) is iterator
    results = _sorted(iterator)
    assert results == _sorted(map(voxel_sum, jobs))
    assert results[-1].error == "FileNotFoundError" and results[0].total is not None


def _raised_message(engine: str) -> str:
    """The message of EngineError for ``raise_error`` on ``case0.nii.gz``."""
    job = r"job SumJob\(path='.*case0\.nii\.gz'\)"
    return rf"^the {engine} engine failed: {job} raised ValueError: no voxels in case0\.nii\.gz$"


def _check_dead_worker(engines, engine: str, run, jobs: list[SumJob], monkeypatch) -> None:
    monkeypatch.setattr(engines, "WORKER_RETRIES", 0)
    with pytest.raises(engines.EngineError, match=f"the {engine} engine failed: "):
        list(run(kill_worker, jobs[:1]))


@pytest.mark.slow
def test_ray_engine_matches_local_loop(engines, jobs, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    engines._start_ray(ray, workers=2)  # the local Ray that map_with_ray starts, started once for every check
    try:
        run = lambda function, jobs: engines.map_with_ray(function, jobs, workers=2)  # noqa: E731
        _check_results(run, jobs)
        _check_dead_worker(engines, "ray", run, jobs, monkeypatch)
        assert ray.is_initialized()  # a Ray that map_with_ray did not start stays up
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_dask_engine_on_the_scheduler_address(engines, jobs, monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    options = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    with distributed.LocalCluster(**options) as cluster:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        run = lambda function, jobs: engines.map_with_dask(function, jobs, workers=5)  # noqa: E731
        _check_results(run, jobs)
        with pytest.raises(engines.EngineError, match=_raised_message("dask")):
            list(run(raise_error, jobs[:1]))
        assert cluster.status.name == "running"  # the engine closed its client, not the cluster it did not start
        assert len(cluster.workers) == 2


@pytest.mark.slow
def test_dask_engine_starts_and_closes_its_own_cluster(engines, jobs, monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    clusters = []

    class RecordedCluster(distributed.LocalCluster):
        def __init__(self, **options):
            super().__init__(**options)
            clusters.append((self, options))

    monkeypatch.setattr(distributed, "LocalCluster", RecordedCluster)
    run = lambda function, jobs: engines.map_with_dask(function, jobs, workers=1)  # noqa: E731
    _check_dead_worker(engines, "dask", run, jobs, monkeypatch)
    [(cluster, options)] = clusters
    assert (options["n_workers"], options["threads_per_worker"], options["processes"]) == (1, 1, True)
    assert cluster.status.name == "closed"


def test_dask_engine_without_a_scheduler_at_the_address(engines, jobs, monkeypatch):
    dask = pytest.importorskip("dask")
    pytest.importorskip("dask.distributed")
    with socket.socket() as unused:  # a port that nothing listens on
        unused.bind(("127.0.0.1", 0))
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", f"tcp://127.0.0.1:{unused.getsockname()[1]}")
    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
        with pytest.raises(engines.EngineError, match=r"the dask engine failed: .*127\.0\.0\.1"):
            list(engines.map_with_dask(voxel_sum, jobs[:1], workers=1))


def test_ray_job_runner_returns_what_a_job_raised_and_the_driver_names_the_job(engines, jobs):
    """The Ray side of a job that raises, in this process: the actor's runner and the driver's reading of rows."""
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    runner = engines._RayJobRunner(raise_error)
    batch = runner({"index": np.array([0]), "job": np.array([cloudpickle.dumps(jobs[0])], dtype=object)})
    assert (batch["index"].tolist(), batch["result"].tolist()) == ([0], [b""])
    assert batch["error"].tolist() == ["ValueError: no voxels in case0.nii.gz"]
    rows = [{"index": 1, "result": cloudpickle.dumps(voxel_sum(jobs[1])), "error": ""},
            {"index": 0, "result": b"", "error": batch["error"][0]}]
    results = engines._ray_rows(iter(rows), jobs)
    assert next(results) == voxel_sum(jobs[1])
    with pytest.raises(engines.EngineError, match=_raised_message("ray")):
        next(results)

    def failing_rows():
        yield from ()
        raise RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: MapWorker")

    message = r"^the ray engine failed: RuntimeError: The actor died unexpectedly before finishing this task\.$"
    with pytest.raises(engines.EngineError, match=message):
        list(engines._ray_rows(failing_rows(), jobs))


class FakeRay:
    """A stand-in ``ray`` module that records how the session logic starts and stops it."""

    def __init__(self, running: bool = False, gpus: float = 0) -> None:
        self.running, self.gpus, self.calls = running, gpus, []

    def is_initialized(self) -> bool:
        return self.running

    def init(self, **kwargs) -> None:
        self.calls.append(("init", kwargs))
        self.running = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown", {}))
        self.running = False

    def cluster_resources(self) -> dict:
        return {"CPU": 2.0, "GPU": self.gpus} if self.gpus else {"CPU": 2.0}


def test_ray_session_starts_a_local_ray_and_shuts_down_only_its_own(engines, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray = FakeRay()
    with engines._ray_session(ray, workers=3, gpus_per_worker=0.0):
        assert ray.running
    (name, kwargs), (last, _) = ray.calls
    assert (name, last, kwargs["num_cpus"], kwargs["include_dashboard"]) == ("init", "shutdown", 3, False)
    assert str(Path(__file__).parents[2]) in kwargs["runtime_env"]["env_vars"]["PYTHONPATH"].split(os.pathsep)
    running = FakeRay(running=True)
    with engines._ray_session(running, workers=3, gpus_per_worker=1.0):
        pass
    assert running.calls == [] and running.running


def test_ray_session_connects_to_ray_address(engines, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    ray = FakeRay()
    with engines._ray_session(ray, workers=3, gpus_per_worker=1.0):  # a remote cluster's GPUs are its business
        pass
    assert ray.calls[0] == ("init", {"address": "ray://head:10001", "logging_level": 30})
    assert ray.calls[1][0] == "shutdown"


def test_ray_session_without_the_gpus_asked_for(engines, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray = FakeRay(gpus=1)
    with pytest.raises(ConfigError, match=r"gpus_per_worker=2\.0 but the local Ray sees 1 GPUs"):
        with engines._ray_session(ray, workers=1, gpus_per_worker=2.0):
            pass
    assert [name for name, _ in ray.calls] == ["init", "shutdown"]


@pytest.mark.parametrize(("module", "engine"), [("ray", "ray"), ("dask", "dask")])
def test_missing_engine_names_the_extra(engines, monkeypatch, module, engine):
    for name in [name for name in sys.modules if name == module or name.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(MissingDependencyError, match=rf'--engine {engine} needs .*pip install "gpuprep\[{engine}\]"'):
        getattr(engines, f"map_with_{engine}")(voxel_sum, [], workers=1)


def test_no_jobs_start_nothing_and_bad_arguments_are_config_errors(engines):
    pytest.importorskip("ray.data")
    pytest.importorskip("dask.distributed")
    assert list(engines.map_with_ray(voxel_sum, [], workers=2)) == []
    assert list(engines.map_with_dask(voxel_sum, iter([]), workers=2)) == []
    with pytest.raises(ConfigError, match="workers must be an integer >= 1"):
        engines.map_with_dask(voxel_sum, [], workers=0)
    with pytest.raises(ConfigError, match="gpus_per_worker must be >= 0"):
        engines.map_with_ray(voxel_sum, [], workers=1, gpus_per_worker=-1)
