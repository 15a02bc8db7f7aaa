"""Run a pipeline over a dataset, file to file: :func:`run_dataset`, the engine of ``gpuprep run``.

The inputs (image files, a folder, a CSV/TSV table or a BIDS root: :mod:`~gpuprep.data.run_inputs`)
become records; the pipeline YAML is checked against them and hashed, and every output path is
planned and checked before any work (:mod:`~gpuprep.data.run_plan`). Each input is then one
:class:`~gpuprep.data.run_jobs.Job`, run end to end by :func:`~gpuprep.data.run_jobs.run_job` on
the chosen engine (:func:`~gpuprep.data.engines.map_jobs`: in this process, a pool of processes,
Ray or Dask) while a bar on stderr shows the files per second and the time left.

Faults: an input that fails is listed in ``<output>/report.csv`` (``file, step, error``) and the
run goes on (``on_error="skip"``), or the run stops at the first (``"raise"``: a
:class:`~gpuprep.errors.DatasetError` naming the file and the step, after the report is written).
``report.csv`` is rewritten by every run, with the header only when nothing failed. Every file is
written atomically, so an interrupted run (Ctrl-C) leaves whole files only; ``resume`` then skips
the inputs whose outputs are up to date (same input content, same pipeline) and redoes the rest.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DatasetError, OutputExistsError
from .records import check_on_error
from .run_jobs import Job, JobResult, RunOptions

REPORT_NAME = "report.csv"
REPORT_HEADER = ("file", "step", "error")
STATUSES = ("done", "skipped", "failed")


@dataclass
class RunSummary:
    """The outcome of :func:`run_dataset`: every job's result, the wall time and the files written for the run."""

    results: list[JobResult]
    seconds: float
    output: Path
    report: Path
    qc_index: Path | None = None
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.counts = {status: sum(r.status == status for r in self.results) for status in STATUSES}

    def slowest_steps(self, count: int = 5) -> list[tuple[str, float, float]]:
        """The ``count`` steps that took the most time in all: ``(name, total seconds, mean seconds per file)``.

        Example
        -------
        >>> results = [JobResult(0, "a", "done", 1.0, steps={"LoadImage": 0.2, "Resample": 0.7})]
        >>> RunSummary(results, 1.0, Path("out"), Path("out/report.csv")).slowest_steps(1)
        [('Resample', 0.7, 0.7)]
        """
        totals: dict[str, list[float]] = {}
        for result in self.results:
            if result.status == "done":
                for name, seconds in result.steps.items():
                    totals.setdefault(name, []).append(seconds)
        ranked = sorted(totals.items(), key=lambda item: -sum(item[1]))[:count]
        return [(name, sum(times), sum(times) / len(times)) for name, times in ranked]

    def lines(self) -> list[str]:
        """The summary printed at the end of ``gpuprep run``."""
        done, skipped, failed = (self.counts[s] for s in STATUSES)
        rate = len(self.results) / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{done} done, {skipped} skipped (up to date), {failed} failed in {self.seconds:.1f} s "
                 f"({rate:.2f} files/s); outputs in {self.output}"]
        slowest = self.slowest_steps()
        if slowest:
            lines.append("slowest steps (total, mean per file):")
            lines += [f"  {name:<34s} {total:8.2f} s {mean * 1000:9.1f} ms" for name, total, mean in slowest]
        if failed:
            lines.append(f"failures listed in {self.report}")
        if self.qc_index is not None:
            lines.append(f"QC report: {self.qc_index}")
        return lines


def run_dataset(pipeline: str | os.PathLike, inputs: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                pattern: str | None = None, workers: int = 1, device: str = "cpu", engine: str = "local",
                resume: bool = False, on_error: str = "skip", qc: bool = False, progress: bool | None = None,
                bids_image: str = "T1w", bids_label: str | None = None) -> RunSummary:
    """Run the pipeline YAML on every input and write the outputs under ``output`` (see the module docstring).

    Parameters
    ----------
    pipeline:
        The pipeline YAML file (:meth:`gpuprep.Compose.to_yaml`), without ``SaveImage``.
    inputs:
        Image files, or one folder, BIDS root or CSV/TSV table.
    output:
        The output folder; outputs mirror the inputs' relative paths under it.
    pattern:
        For a folder input: the files to take (default: every image, recursively).
    workers, engine:
        How many inputs run at once, and where (``"local"``, ``"ray"``, ``"dask"``).
    device:
        Torch device of the pipeline (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
    resume:
        Skip inputs whose outputs exist with the same input and pipeline hashes.
    on_error:
        ``"skip"``: list failures in ``report.csv`` and go on; ``"raise"``: stop at the first.
    qc:
        Also measure every output and write ``qc/index.html`` with a montage per input.
    progress:
        Show the bar on stderr (None: when stderr is a terminal).
    bids_image, bids_label:
        For a BIDS root: the images' suffix, and the labels' (None: no labels).

    Example
    -------
    >>> import gpuprep as gp, tempfile
    >>> work = Path(tempfile.mkdtemp())
    >>> _ = gp.Compose([gp.Flip("image", 0)]).to_yaml(work / "flip.yaml")
    >>> summary = run_dataset(work / "flip.yaml", [gp.data.sample_brain_paths()["image"]], work / "out")
    >>> summary.counts, sorted(p.name for p in (work / "out").iterdir())
    ({'done': 1, 'skipped': 0, 'failed': 0}, ['report.csv', 'sample_t1w.json', 'sample_t1w.nii.gz'])
    """
    from ..io.outputs import check_output_folder, make_folders
    from .engines import map_jobs
    from .run_inputs import resolve_inputs
    from .run_jobs import run_job
    from .run_plan import load_run_pipeline, plan_outputs
    from .run_qc import write_index

    check_on_error(on_error, "--on-error")
    device = _check_device(device)
    found = resolve_inputs(inputs, pattern, bids_image, bids_label)
    text, digest, made = load_run_pipeline(pipeline, found.records[0])
    folders = plan_outputs(found, output, made)
    output = Path(output)
    check_output_folder(output, "--output", probe=True)
    _check_report(output / REPORT_NAME)
    make_folders(output)
    options = RunOptions(device, bool(resume), bool(qc))
    jobs = [Job(i, r, found.primary, found.relative(r), str(folder), str(output), text, digest, options)
            for i, (r, folder) in enumerate(zip(found.records, folders))]
    results: list[JobResult] = []
    start = time.perf_counter()
    try:
        _collect(map_jobs(run_job, jobs, engine, workers, device), len(jobs), results, on_error, progress)
    finally:
        write_report(results, output / REPORT_NAME)
    summary = RunSummary(results, time.perf_counter() - start, output, output / REPORT_NAME)
    if qc:
        summary.qc_index = write_index(results, output)
    return summary


def _collect(results: Iterator[JobResult], total: int, into: list[JobResult], on_error: str,
             progress: bool | None) -> None:
    """Gather the results under a progress bar; with ``on_error="raise"``, stop at the first failure."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="gpuprep run", unit="file", file=sys.stderr,
               disable=None if progress is None else not progress)
    try:
        for result in results:
            into.append(result)
            bar.update(1)
            if result.status == "failed":
                bar.set_postfix(failed=sum(r.status == "failed" for r in into))
                if on_error == "raise":
                    raise DatasetError(f"{result.source}: step {result.step} failed: {result.error} "
                                       "(--on-error raise stops at the first failure)")
    finally:
        bar.close()
        close = getattr(results, "close", None)
        if close is not None:  # stop the engine: queued jobs are cancelled, running ones finish
            close()


def write_report(results: Sequence[JobResult], path: Path) -> Path:
    """Write the failures of ``results`` to ``path`` atomically as CSV ``file, step, error`` (input order).

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "report.csv"
    >>> _ = write_report([JobResult(0, "a.nii.gz", "failed", step="LoadImage", error="ImageReadError: bad")], path)
    >>> path.read_text().splitlines()
    ['file,step,error', 'a.nii.gz,LoadImage,ImageReadError: bad']
    """
    from ..io.atomic import atomic_write_bytes

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(REPORT_HEADER)
    for result in sorted(results, key=lambda r: r.index):
        if result.status == "failed":
            writer.writerow([result.source, result.step, result.error])
    return atomic_write_bytes(path, text.getvalue().encode())


def _check_report(path: Path) -> None:
    """Refuse to replace a ``report.csv`` that is not a run report (its first line is not the header)."""
    if not path.exists():
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            first = stream.readline().strip()
    except OSError:
        first = None
    if path.is_dir() or first != ",".join(REPORT_HEADER):
        raise OutputExistsError(f"--output: {path} exists and is not a gpuprep run report (first line "
                                f"{first!r}, expected {','.join(REPORT_HEADER)!r}); choose another output folder")


def _check_device(device: str) -> str:
    """Refuse a device torch does not know, or CUDA where there is none."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for, but PyTorch sees no CUDA device here")
    return str(parsed)
