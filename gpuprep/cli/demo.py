"""``gpuprep demo``: run the default brain-MRI pipeline on the bundled sample or your files.

For each input it writes the preprocessed NIfTI file(s), a JSON sidecar with the full history
(provenance), the pipeline as YAML, and a PNG montage (three orthogonal slices, before and
after). It prints the device and the time of every step.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.sample_data import sample_brain_paths
from ..io.montage import save_montage
from ..sample import get_affine, image_keys
from ..transforms.io import LoadImage, SaveImage
from ..transforms.presets import brain_mri_preprocessing

DEFAULT_OUTPUT = "gpuprep-demo"


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``demo`` sub-command."""
    parser = commands.add_parser(
        "demo",
        help="preprocess the bundled sample brain (or your files) and write NIfTI, JSON and PNG",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input", nargs="+", metavar="PATH", type=Path,
        help="image file(s) to preprocess (default: the bundled 2 mm sample T1 brain and its labels)",
    )
    parser.add_argument("--output", type=Path, default=Path(DEFAULT_OUTPUT), metavar="DIR",
                        help=f"output folder, created if needed (default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run: auto picks CUDA when available (default: auto)")
    parser.set_defaults(run=run)


def resolve_device(name: str) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda`` into a device, with a clear error when CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from ..errors import ConfigError

        raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA device here")
    return torch.device(name)


def run(args: argparse.Namespace) -> int:
    """Preprocess every input and print where the outputs went."""
    device = resolve_device(args.device)
    if args.input:
        jobs = [{"image": str(path)} for path in args.input]
        label_keys: list[str] = []
    else:
        paths = sample_brain_paths()
        jobs = [{key: str(path) for key, path in paths.items()}]
        label_keys = [key for key in paths if key != "image"]
    print(f"gpuprep demo: device {device}, {len(jobs)} input(s), output folder {args.output}")
    args.output.mkdir(parents=True, exist_ok=True)
    progress = tqdm(jobs, desc="preprocessing", unit="image", disable=len(jobs) < 2)
    for job in progress:
        _process(job, label_keys, device, args.output, verbose=len(jobs) == 1)
    print(f"done: outputs in {args.output.resolve()}")
    return 0


def _process(job: dict, label_keys: list[str], device: torch.device, output: Path, verbose: bool) -> None:
    keys = ["image", *label_keys]
    timings: list[tuple[str, float]] = []

    def timed(name, function, *arguments):
        start = time.perf_counter()
        result = function(*arguments)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append((name, time.perf_counter() - start))
        return result

    sample = timed("load", LoadImage("image", dtype="float32"), job)
    if label_keys:
        sample = timed("load labels", LoadImage(label_keys, labels=True), sample)
    sample = timed(f"to {device.type}", _to_device, sample, keys, device)
    before = (sample["image"], get_affine(sample, "image"))
    pipeline = brain_mri_preprocessing(image_keys=["image"], label_keys=label_keys)
    for transform in pipeline.transforms:
        sample = timed(type(transform).__name__, transform, sample)
    stem = Path(job["image"]).name.split(".")[0]
    saved = [key for key in image_keys(sample) if key not in keys] + keys
    timed("save NIfTI + JSON", SaveImage(saved, output_dir=output, suffix="_preprocessed"), sample)
    pipeline.to_yaml(output / f"{stem}_pipeline.yaml")
    timed("QC montage", save_montage, output / f"{stem}_qc.png",
          [("input", *before), ("preprocessed", sample["image"], get_affine(sample, "image"))])
    if verbose:
        for name, seconds in timings:
            print(f"  {name:<22s} {seconds * 1000:8.1f} ms")
        print(f"  {'total':<22s} {sum(s for _, s in timings) * 1000:8.1f} ms")


def _to_device(sample: dict, keys: list[str], device: torch.device) -> dict:
    return {**sample, **{key: sample[key].to(device, non_blocking=True) for key in keys}}
