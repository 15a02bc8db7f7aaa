"""``gpuprep segment``: segment a brain MRI with a bundled U-Net and measure the labels.

Reads any NIfTI (or other supported image: any orientation, spacing and size), runs
``SegmentBrain`` (task ``brain-tissue``: background, CSF, GM, WM) or ``SkullStrip`` (task
``brain-mask``: a 0/1 brain mask) and writes, each atomically:

- OUTPUT: the label map, uint8, with exactly the input's shape and affine;
- a QC PNG (default: OUTPUT with ``_qc.png``): orthogonal slices with the labels in colour,
  orientation letters (L/R, A/P, S/I; the patient's left on the left) and a legend of the labels;
- a JSON file (default: OUTPUT with ``.json``): per label name the voxel count and volume in mL
  (voxel volume = |det(affine[:3, :3])| mm^3), plus the task, model file, weights SHA-256,
  device, per-step timings and the history.

The input is only read. Every output path is checked (an image extension for OUTPUT, not a
folder, a writable folder) before the model runs; missing output folders are created only to
write the outputs, and a failed run removes the files and folders it created. Existing outputs
are replaced, except a JSON file that gpuprep did not write (e.g. a BIDS sidecar). ``--weights``
runs a checkpoint file of your own instead of the bundled weights (its spec names the task).
While the network runs, a bar on stderr counts the sliding windows done (``--progress``;
by default only when stderr is a terminal).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .._version import __version__
from ..errors import ConfigError, ImageWriteError

if TYPE_CHECKING:
    import torch

# torch and gpuprep's IO, models and transforms are imported in run(): building the parser
# (``gpuprep --help``) must stay fast.

LABEL_KEY = "labels"
#: The tasks of the bundled models (:data:`gpuprep.models.pretrained.TASKS`, which imports torch).
TASKS = ("brain-tissue", "brain-mask")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``segment`` sub-command."""
    parser = commands.add_parser(
        "segment",
        help="segment brain tissue or the brain mask; write labels NIfTI, QC PNG and volumes JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=Path, metavar="INPUT", help="image file (NIfTI, MGH, ...)")
    parser.add_argument("output", type=Path, metavar="OUTPUT", help="label map to write (.nii.gz, .nii, .mgz)")
    parser.add_argument("--task", choices=TASKS, default=None,
                        help="brain-tissue (CSF/GM/WM of a skull-stripped brain) or brain-mask (whole head); "
                             "default: the checkpoint's task with --weights, else brain-tissue")
    parser.add_argument("--weights", type=Path, metavar="PATH",
                        help="checkpoint file to use instead of the bundled one")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the network runs: auto picks CUDA when available (default: auto)")
    parser.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=None,
                        help="average the prediction with that of the left-right mirrored image (twice the "
                             "network time; default: on for brain-tissue, off for brain-mask)")
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                        help="brain-tissue: sharpen the tissue probabilities with the image's own intensities "
                             "(a Gaussian per tissue fitted to this scan; default: on)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show the sliding windows done / total on stderr (default: when stderr is a terminal)")
    parser.add_argument("--qc", type=Path, metavar="PNG", help="QC overlay PNG (default: OUTPUT with _qc.png)")
    parser.add_argument("--volumes", type=Path, metavar="JSON", help="label volumes JSON (default: OUTPUT with .json)")
    parser.set_defaults(run=run)


def default_paths(output: Path) -> tuple[Path, Path]:
    """The default QC PNG and volumes JSON paths beside ``output``.

    Example
    -------
    >>> [p.name for p in default_paths(Path("out/sub-01_dseg.nii.gz"))]
    ['sub-01_dseg_qc.png', 'sub-01_dseg.json']
    """
    from ..io.sidecar import strip_image_extension

    stem = strip_image_extension(output.name)
    return output.with_name(f"{stem}_qc.png"), output.with_name(f"{stem}.json")


def run(args: argparse.Namespace) -> int:
    """Segment one image and write the label map, the QC PNG and the volumes JSON."""
    import torch

    from ..io.atomic import atomic_write_bytes
    from ..io.overlay import save_overlay
    from ..io.sidecar import to_json
    from ..io.writer import write_image
    from ..models.inference import SegmentBrain, SkullStrip
    from ..models.pretrained import load_pretrained, resolve_device
    from ..sample import get_affine, get_history, get_meta
    from ..transforms.io import LoadImage

    device = resolve_device(args.device, "--device")
    qc_path, volumes_path = default_paths(args.output)
    qc_path, volumes_path = args.qc or qc_path, args.volumes or volumes_path
    outputs = {"OUTPUT": args.output, "--qc": qc_path, "--volumes": volumes_path}
    _check_paths(args.input, outputs)
    timings: dict[str, float] = {}

    def timed(name, function, *arguments, **options):
        start = time.perf_counter()
        result = function(*arguments, **options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings[name] = time.perf_counter() - start
        print(f"  {name:<16s} {timings[name] * 1000:9.1f} ms", flush=True)
        return result

    print(f"gpuprep segment: {args.input} -> {args.output} (device {device})")
    sample = timed("load image", LoadImage("image", dtype="float32"), {"image": str(args.input)})
    model = timed("load model", load_pretrained, args.weights or args.task or "brain-tissue", device)
    task = model.spec["task"]
    if args.task is not None and task != args.task:
        raise ConfigError(f"--task {args.task} was asked for, but the checkpoint {args.weights} is for {task!r}")
    flip = {} if args.flip_average is None else {"flip_average": args.flip_average}
    with window_progress(args.progress) as progress:
        if task == "brain-mask":
            transform = SkullStrip("image", mask_key=LABEL_KEY, model=model, apply=False, device=device,
                                   progress=progress, **flip)
        else:
            transform = SegmentBrain("image", output_key=LABEL_KEY, model=model, device=device, refine=args.refine,
                                     progress=progress, **flip)
        sample = timed("segment", transform, {**sample, "image": sample["image"].to(device)})
    labels = sample[LABEL_KEY].cpu()
    affine = get_affine(sample, LABEL_KEY)
    meta = get_meta(sample, "image")
    qform = meta.get("qform_code")
    report = _volumes(labels, affine, model.spec["labels"])
    with _all_or_nothing(outputs.values()):
        timed("write NIfTI", write_image, args.output, labels, affine, sidecar=False, qform_code=qform,
              sform_code=meta.get("sform_code") or qform or None)
        timed("QC PNG", save_overlay, qc_path, sample["image"], labels, affine, names=model.spec["labels"],
              title=task)
        summary = {
            "input": str(args.input), "output": str(args.output), "qc": str(qc_path), "task": task,
            "model": transform.model_name, "weights_sha256": transform.weights_sha256, "device": str(device),
            "shape": list(labels.shape[1:]), "affine": affine, **report,
            "timings_s": {name: round(seconds, 4) for name, seconds in timings.items()},
            "gpuprep_version": __version__, "history": get_history(sample),
        }
        atomic_write_bytes(volumes_path, (json.dumps(to_json(summary), indent=2) + "\n").encode())
    for name, entry in report["labels"].items():
        print(f"  {name:<16s} {entry['voxels']:9d} voxels {entry['volume_ml']:10.2f} mL")
    print(f"done: {args.output}, {qc_path}, {volumes_path}")
    return 0


@contextlib.contextmanager
def window_progress(enabled: bool | None) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback for the sliding windows that draws a tqdm bar on stderr.

    ``enabled=None`` shows it only when stderr is a terminal (tqdm's rule), so logs and pipes
    get no bar. A bar closes when its image's windows are done, or when the block ends.

    Example
    -------
    >>> with window_progress(False) as progress:
    ...     progress(1, 4)
    """
    from tqdm import tqdm

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None or bar.total != total or done < bar.n:  # a new image: a new bar
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc="sliding windows", unit="window", file=sys.stderr,
                       disable=None if enabled is None else not enabled)
        bar.update(done - bar.n)
        if done >= total:  # stop the clock: mapping back and refining come after the windows
            bar.close()

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()


def _check_paths(source: Path, outputs: dict[str, Path]) -> None:
    """Check the input and every output before any work, so that a bad path never costs a model run.

    Refused: a missing input, an output that is the input or another output, an OUTPUT without
    an image extension, an output that is a folder, under a file or in an unwritable folder, and
    a volumes path holding a JSON that gpuprep did not write (e.g. a BIDS sidecar).
    Nothing is created here (folders are made only when the outputs are written).
    """
    from ..io.outputs import check_output_file
    from ..io.writer import write_format

    if not source.exists():
        raise FileNotFoundError(f"input image not found: {source}")
    if source.is_dir():
        raise ConfigError(f"INPUT {source} is a folder; give an image file")
    seen: dict[Path, str] = {source.resolve(): "INPUT"}
    for name, path in outputs.items():
        resolved = path.resolve()
        if resolved in seen:
            raise ConfigError(f"{name} {path} is the same file as {seen[resolved]}; choose another path")
        seen[resolved] = name
    try:
        write_format(outputs["OUTPUT"])
    except ConfigError as error:
        raise ConfigError(f"OUTPUT: {error}") from None
    for name, path in outputs.items():
        try:
            # Outputs are replaced, except a JSON report path holding a JSON gpuprep did not write.
            check_output_file(path, overwrite=True, sidecar=name == "--volumes", probe=True)
        except ImageWriteError as error:
            raise ImageWriteError(f"{name}: {error}") from None


@contextlib.contextmanager
def _all_or_nothing(outputs: Iterable[Path]) -> Iterator[None]:
    """Create the outputs' missing folders; if the block fails, remove the new files and folders again."""
    from ..io.outputs import make_folders, remove_empty_folders

    outputs = list(outputs)
    new_files = [path for path in outputs if not path.exists()]
    created: list[Path] = []
    try:
        for path in outputs:
            created += make_folders(path.parent)
        yield
    except BaseException:
        for path in new_files:
            path.unlink(missing_ok=True)
        remove_empty_folders(sorted(created, key=lambda p: len(p.parts), reverse=True))
        raise


def _volumes(labels: torch.Tensor, affine: torch.Tensor, names: dict[str, str]) -> dict:
    """Voxel count and volume in mL of every label of the model."""
    import numpy as np
    import torch

    voxel_mm3 = abs(float(np.linalg.det(affine.numpy()[:3, :3])))
    counts = torch.bincount(labels.reshape(-1).long(), minlength=len(names)).tolist()
    entries = {}
    for value, count in enumerate(counts):
        name = names.get(str(value), f"label {value}")
        entries[name] = {"label": value, "voxels": int(count), "volume_ml": count * voxel_mm3 / 1000.0}
    return {"voxel_volume_mm3": voxel_mm3, "labels": entries}
