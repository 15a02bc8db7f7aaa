"""``gpuprep run``: run a pipeline YAML over a dataset, one input at a time or several in parallel.

INPUT is image files, a folder (every image under it, recursively, or those matching
``--pattern``), a CSV/TSV table (its columns of image paths; relative paths are relative to the
table) or a BIDS root (``sub-*/[ses-*/]anat/*_T1w.nii.gz``; ``--bids-image``, ``--bids-label``).
PIPELINE is a YAML file written by ``Compose.to_yaml`` (or by hand); if it does not start with
LoadImage, every image column is loaded (the keys named label, seg, mask, dseg... as label maps).
It must not contain SaveImage: the run writes every image key of the result itself.

Every output mirrors its input's path relative to the input folder (or the files' common folder)
under DIR, as ``.nii.gz``: ``sub-01/anat/sub-01_T1w.nii.gz`` gives ``DIR/sub-01/anat/sub-01_T1w.nii.gz``
and, for a mask the pipeline makes under key ``foreground``, ``sub-01_T1w_foreground.nii.gz``,
each with a JSON sidecar holding its history, the pipeline that made it and the run's stamp
(SHA-256 of the input files and of the pipeline). Refused before any work: two inputs whose
outputs would collide, a DIR that holds an input (nothing under DIR can then be an input), a DIR
inside a scanned INPUT folder, an existing JSON that gpuprep did not write.

``--resume`` skips an input whose outputs and sidecars exist with the same input and pipeline
hashes; a changed input or pipeline is redone. A failed input is listed in ``DIR/report.csv``
(file, step, error) and the run goes on (``--on-error skip``, exit status 1 if any failed) or
stops (``--on-error raise``, exit status 2). Every file is written atomically: Ctrl-C leaves no
half-written file (running inputs finish, the rest are left for ``--resume``). ``--qc`` measures
every output (shape, spacing, intensity range, mask volume in mL, warnings such as an empty
mask), draws a montage per input and writes ``DIR/qc/index.html``. A bar on stderr shows the
files per second and the time left; the summary gives the counts, the time and the slowest steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ENGINES = ("local", "ray", "dask")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``run`` sub-command."""
    parser = commands.add_parser(
        "run",
        help="run a pipeline YAML over files, a folder, a CSV table or a BIDS root; outputs mirror the inputs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pipeline", type=Path, metavar="PIPELINE.yaml", help="the pipeline (Compose.to_yaml)")
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                        help="image files, or one folder, CSV/TSV table or BIDS root")
    parser.add_argument("--output", "-o", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--pattern", metavar="GLOB",
                        help="folder INPUT: the files to take, e.g. '*_T1w.nii.gz' (at any depth unless it has a /)")
    parser.add_argument("--workers", type=_workers, default=1, metavar="N",
                        help="inputs processed at once (default: 1, in this process)")
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="cpu, cuda, cuda:N or auto (CUDA when available; default: cpu)")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local processes, or a Ray / Dask cluster (default: local)")
    parser.add_argument("--resume", action="store_true", help="skip inputs whose outputs are up to date")
    parser.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                        help="skip: list failures in DIR/report.csv and go on (default); raise: stop at the first")
    parser.add_argument("--qc", action="store_true", help="write QC numbers, montages and DIR/qc/index.html")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show the progress bar on stderr (default: when stderr is a terminal)")
    parser.add_argument("--bids-image", default="T1w", metavar="SUFFIX", help="BIDS INPUT: image suffix (default T1w)")
    parser.add_argument("--bids-label", metavar="SUFFIX", help="BIDS INPUT: also load labels with this suffix")
    parser.set_defaults(run=run)


def _workers(text: str) -> int:
    """Parse ``--workers``: a whole number of at least 1.

    Example
    -------
    >>> _workers("4")
    4
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def resolve_device(name: str) -> str:
    """Turn ``auto`` into ``cuda`` when PyTorch sees a GPU, else ``cpu``; other names pass through.

    Example
    -------
    >>> resolve_device("cpu")
    'cpu'
    """
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    """Run the pipeline over the inputs, print the summary; 1 if an input failed, else 0."""
    from ..data.dataset_run import run_dataset

    device = resolve_device(args.device)
    print(f"gpuprep run: {args.pipeline} on {len(args.inputs)} INPUT(s) -> {args.output} ({args.workers} "
          f"worker(s), engine {args.engine}, device {device})", flush=True)
    summary = run_dataset(
        args.pipeline, args.inputs, args.output, pattern=args.pattern, workers=args.workers, device=device,
        engine=args.engine, resume=args.resume, on_error=args.on_error, qc=args.qc, progress=args.progress,
        bids_image=args.bids_image, bids_label=args.bids_label)
    for line in summary.lines():
        print(line)
    return 1 if summary.counts["failed"] else 0
