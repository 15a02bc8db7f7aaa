"""One input of a dataset run, end to end: :class:`Job` in, :func:`run_job` in any worker, :class:`JobResult` out.

A job is small and picklable (the record, where its outputs go, the pipeline's YAML and hash, the
options), so a process pool, Ray or Dask can ship it. :func:`run_job` hashes the input files,
skips the job when ``resume`` finds its outputs up to date, loads the files, runs the pipeline one
step (or fused run of steps) at a time with a clock on each, writes every image key of the result
with :class:`~gpuprep.SaveImage` (atomically, each with its JSON sidecar) and then adds to every
sidecar the run's stamp ``"gpuprep_run": {"input_sha256", "pipeline_sha256", "outputs", "qc"}``,
the primary output's sidecar last (QC numbers, warnings and montage are made before writing, so
that a resumed run lists them without reading the outputs). An interrupted job thus leaves whole
files and, at worst, sidecars without the stamp, which ``resume`` redoes. Errors are returned as
a failed result naming the step.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import is_image_path

#: The sidecar field holding a run's stamp.
RUN_FIELD = "gpuprep_run"
_CHUNK = 1 << 20
# Per process: the pipeline of each hash, built once however many jobs a worker runs.
_PIPELINES: dict[str, Any] = {}


@dataclass(frozen=True)
class RunOptions:
    """How every job of a run is done: the torch ``device``, ``resume`` (skip up-to-date outputs), ``qc``."""

    device: str = "cpu"
    resume: bool = False
    qc: bool = False


@dataclass(frozen=True)
class Job:
    """One input of a run: everything a worker needs to process it on its own.

    Attributes
    ----------
    index:
        The record's position in the run (the ``sample_index`` random steps draw from).
    record:
        Key -> file path (or other value) of the input.
    primary:
        The key whose file names the outputs.
    relative:
        The primary file's path relative to the mirrored input folder (for reports).
    output_dir, run_dir:
        The folder the outputs go to, and the run's output folder (results name files relative to it).
    pipeline_yaml, pipeline_hash:
        The pipeline that runs (with its LoadImage step) and its SHA-256.
    options:
        Device, resume, QC.
    """

    index: int
    record: dict[str, Any]
    primary: str
    relative: str
    output_dir: str
    run_dir: str
    pipeline_yaml: str
    pipeline_hash: str
    options: RunOptions = RunOptions()


@dataclass
class JobResult:
    """What became of a job: ``status`` is ``"done"``, ``"skipped"`` (up to date) or ``"failed"``.

    ``outputs`` are the image files written (or found up to date), relative to the run folder;
    ``steps`` the seconds of each step; a failure names its ``step`` and ``error``; ``qc`` holds
    ``{"numbers", "warnings", "montage"}`` when the run makes QC.
    """

    index: int
    source: str
    status: str
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)
    step: str | None = None
    error: str | None = None
    qc: dict | None = None


def run_job(job: Job) -> JobResult:
    """Process one input end to end (see the module docstring); never raises for a bad input.

    Example
    -------
    >>> import gpuprep as gp, tempfile
    >>> out = tempfile.mkdtemp()
    >>> source = str(gp.data.sample_brain_paths()["image"])
    >>> text = gp.Compose([gp.LoadImage("image"), gp.Flip("image", 0)]).to_yaml()
    >>> job = Job(0, {"image": source}, "image", "sample_t1w.nii.gz", out, out, text, "0" * 64)
    >>> result = run_job(job)
    >>> result.status, result.outputs, list(result.steps)[-2:]
    ('done', ['sample_t1w.nii.gz'], ['Flip', 'save'])
    """
    start = time.perf_counter()
    clock = _Clock(job.options.device)
    try:
        digest = clock.time("hash input", input_hash, job.record)
        if job.options.resume:
            found = clock.time("resume check", up_to_date, job, digest)
            if found is not None:
                return JobResult(job.index, job.relative, "skipped", time.perf_counter() - start, found[0],
                                 clock.steps, qc=found[1])
        sample, before = _process(job, clock)
        qc = clock.time("qc", _qc, job, sample, before) if job.options.qc else None
        outputs = clock.time("save", _save, job, sample, {"input_sha256": digest, "qc": qc})
    except Exception as error:
        message = " ".join(str(error).split()) or type(error).__name__
        return JobResult(job.index, job.relative, "failed", time.perf_counter() - start, [], clock.steps,
                         clock.current, f"{type(error).__name__}: {message}")
    return JobResult(job.index, job.relative, "done", time.perf_counter() - start, outputs, clock.steps, qc=qc)


class _Clock:
    """The seconds of each named step of a job (after the GPU finished it), and the step now running."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.steps: dict[str, float] = {}
        self.current: str | None = None

    def time(self, name: str, function: Callable, *arguments: Any) -> Any:
        self.current = name
        begin = time.perf_counter()
        result = function(*arguments)
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - begin
        self.current = None
        return result


def input_hash(record: dict[str, Any]) -> str:
    """SHA-256 of a record: every key, its value, and the bytes of every image file it names.

    Example
    -------
    >>> input_hash({"age": "34"}) == input_hash({"age": "34"}) != input_hash({"age": "35"})
    True
    """
    digest = hashlib.sha256()
    for key in sorted(record):
        value = record[key]
        digest.update(f"{key}\0{'<file>' if is_image_path(value) else value}\0".encode())
        if is_image_path(value) and Path(value).is_file():
            with open(value, "rb") as stream:
                while chunk := stream.read(_CHUNK):
                    digest.update(chunk)
    return digest.hexdigest()


def primary_output(job: Job) -> Path:
    """The path of a job's primary output: its input's name with ``.nii.gz``, in its output folder.

    Example
    -------
    >>> job = Job(0, {"image": "/data/sub-01_T1w.nii"}, "image", "sub-01_T1w.nii", "/out/site1", "/out", "", "")
    >>> primary_output(job).as_posix()
    '/out/site1/sub-01_T1w.nii.gz'
    """
    from ..io.sidecar import strip_image_extension

    return Path(job.output_dir) / f"{strip_image_extension(Path(job.record[job.primary]).name)}.nii.gz"


def up_to_date(job: Job, digest: str) -> tuple[list[str], dict | None] | None:
    """Whether the outputs of ``job`` are up to date: all exist, stamped with this input and pipeline hash.

    Returns the outputs (relative to the run folder) and the QC stored in the stamp, or None when
    the job must be done (again); with QC asked for, a stamp without QC is not up to date.

    Example
    -------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> up_to_date(Job(0, {"image": "a.nii.gz"}, "image", "a.nii.gz", out, out, "", "0" * 64), "1" * 64) is None
    True
    """
    from ..io.sidecar import sidecar_path

    stamp = {"input_sha256": digest, "pipeline_sha256": job.pipeline_hash}
    first = _stamp(sidecar_path(primary_output(job)))
    if first is None or any(first.get(k) != v for k, v in stamp.items()):
        return None
    montage = (first.get("qc") or {}).get("montage")
    if job.options.qc and not (montage and (Path(job.run_dir) / "qc" / montage).is_file()):
        return None
    outputs = [Path(job.output_dir) / name for name in first.get("outputs", [])]
    for path in outputs:
        found = _stamp(sidecar_path(path))
        if not path.is_file() or found is None or any(found.get(k) != v for k, v in stamp.items()):
            return None
    return [_relative(path, job) for path in outputs], first.get("qc")


def _stamp(sidecar: Path) -> dict | None:
    from ..io.sidecar import read_sidecar

    try:
        stamp = read_sidecar(sidecar).get(RUN_FIELD)
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _relative(path: Path, job: Job) -> str:
    return Path(os.path.relpath(path, job.run_dir)).as_posix()


def _pipeline(job: Job) -> Any:
    from ..transforms.compose import Compose

    if job.pipeline_hash not in _PIPELINES:
        _PIPELINES[job.pipeline_hash] = Compose.from_yaml(job.pipeline_yaml)
    return _PIPELINES[job.pipeline_hash]


def _process(job: Job, clock: _Clock) -> tuple[dict, tuple | None]:
    """Run the pipeline on the job's record, timing each step; return the result and the input as loaded (for QC)."""
    from ..random.seeding import SAMPLE_INDEX_KEY
    from ..sample import get_affine
    from ..transforms.fusion import apply_fused, fusion_runs

    pipeline = _pipeline(job)
    runs = fusion_runs(pipeline.transforms) if pipeline.fuse else [[t] for t in pipeline.transforms]
    sample: dict = {**job.record, SAMPLE_INDEX_KEY: job.index}
    before = None
    for run in runs:
        name = "+".join(type(t).__name__ for t in run)
        sample = clock.time(name, apply_fused if len(run) > 1 else run[0], *([run] if len(run) > 1 else []), sample)
        if name == "LoadImage":
            if job.options.device != "cpu":
                sample = clock.time(f"to {job.options.device}", _to_device, sample, job.options.device)
            if job.options.qc and job.primary in sample:
                before = (sample[job.primary], get_affine(sample, job.primary))
    return sample, before


def _to_device(sample: dict, device: str) -> dict:
    from ..sample import image_keys

    return {**sample, **{key: sample[key].to(device) for key in image_keys(sample)}}


def _save(job: Job, sample: dict, stamp: dict) -> list[str]:
    """Write every image key (the primary first) with SaveImage, then stamp every sidecar, the primary's last.

    ``stamp`` holds the input hash and the QC; the pipeline hash and the outputs are added.
    """
    from ..batching import collate
    from ..io.sidecar import read_sidecar, write_sidecar
    from ..sample import get_history, image_keys
    from ..transforms.save_image import SaveImage

    keys = [job.primary, *(k for k in image_keys(sample) if k != job.primary)]
    saver = SaveImage(keys, job.output_dir, overwrite=True)
    _refuse_foreign_files(saver.make_params(collate([sample]), keys)[0].values())
    saved = saver(sample)
    written = get_history(saved)[-1]["params"]
    paths = [Path(written[key]["filename"]) for key in keys]
    stamp = {**stamp, "pipeline_sha256": job.pipeline_hash,
             "outputs": [os.path.relpath(p, job.output_dir) for p in paths]}
    for path in reversed(paths):
        write_sidecar(path, {**read_sidecar(path), RUN_FIELD: stamp})
    return [_relative(path, job) for path in paths]


def _refuse_foreign_files(targets) -> None:
    """Refuse to replace an existing image that gpuprep did not write (no gpuprep sidecar beside it).

    ``gpuprep run`` replaces its own earlier outputs (a rerun without ``--resume``), never a
    file someone else put in the output folder.
    """
    from ..errors import OutputExistsError
    from ..io.outputs import written_by_gpuprep

    for target in targets:
        image, sidecar = Path(target["filename"]), target["sidecar"]
        if image.exists() and not (sidecar is not None and Path(sidecar).is_file() and written_by_gpuprep(sidecar)):
            raise OutputExistsError(f"refusing to replace {image}: the file exists and gpuprep did not write it "
                                    "(no gpuprep sidecar beside it); move it or choose another --output folder")


def _qc(job: Job, sample: dict, before: tuple | None) -> dict:
    from .run_qc import qc_entry

    return qc_entry(job, sample, before)
