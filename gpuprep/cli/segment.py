"""``gpuprep segment``: segment a brain MRI with a bundled U-Net and measure the labels.

Reads any NIfTI (or other supported image: any orientation, spacing and size), runs
``SegmentBrain`` (task ``brain-tissue``: background, CSF, GM, WM) or ``SkullStrip`` (task
``brain-mask``: a 0/1 brain mask) and writes, each atomically:

- OUTPUT: the label map, uint8, with exactly the input's shape and affine;
- a QC PNG (default: OUTPUT with ``_qc.png``): orthogonal slices with the labels in colour,
  orientation letters (L/R, A/P, S/I; the patient's left on the left) and a legend of the labels;
- a JSON file (default: OUTPUT with ``.json``): per label name the voxel count and volume in mL
  (voxel volume = |det(affine[:3, :3])| mm^3), plus the task, model file, weights SHA-256,
  device, per-stage timings, the skull-stripping decision and the history.

brain-tissue on a whole head: the tissue network expects a skull-stripped brain, so the head is
skull-stripped first with the bundled brain-mask model (``SkullStrip``: largest component, holes
filled, the image set to 0 outside), and ``SegmentBrain`` then works on the mask's bounding box
only; every label outside the brain mask is 0. The history shows SkullStrip, then SegmentBrain.
An input that is already skull-stripped is not stripped again (that would shave off surface CSF
and grey matter); its brain mask is its voxels above the background value (``ForegroundMask``,
holes filled). Which applies: ``--skull-stripped`` / ``--no-skull-stripped`` say it; by default
the input counts as skull-stripped when at least 25 % of its voxels hold exactly its minimum
(a constant background) and the other voxels fill at most 3000 mL (a brain with its CSF is
1100-2500 mL, also in MNI-sized spaces; the adult heads tried fill 4100 mL or more). The decision
and its reason are printed and written to the JSON.

The input is only read. Every output path is checked (an image extension for OUTPUT, not a
folder, a writable folder) before the model runs; missing output folders are created only to
write the outputs, and a failed run removes the files and folders it created. Existing outputs
are replaced, except a JSON file that gpuprep did not write (e.g. a BIDS sidecar). ``--weights``
runs a checkpoint file of your own instead of the bundled weights (its spec names the task).
While the network runs, a bar on stderr counts the sliding windows done (``--progress``;
by default only when stderr is a terminal). The time of every stage is printed (load, skull
strip, tissue network, refinement, write, QC): about 15 s in all for a 1 mm 256^3 head on one
thread of a 2-core CPU (see the brain-tissue model card).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import ConfigError, ImageWriteError

if TYPE_CHECKING:
    import torch

# torch and gpuprep's IO, models and transforms are imported in run() and its helpers: building the parser
# (``gpuprep --help``) must stay fast.

LABEL_KEY = "labels"
MASK_KEY = "brain_mask"
#: The automatic skull-stripped rule (see the module docstring): at least this share of the voxels
#: at exactly the image's minimum ...
STRIPPED_MIN_BACKGROUND = 0.25
#: ... and at most this volume (mL) above it.
STRIPPED_MAX_FOREGROUND_ML = 3000.0
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
                        help="brain-tissue (CSF/GM/WM; a whole head is skull-stripped first) or brain-mask "
                             "(of a whole head); "
                             "default: the checkpoint's task with --weights, else brain-tissue")
    parser.add_argument("--weights", type=Path, metavar="PATH",
                        help="checkpoint file to use instead of the bundled one")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the network runs: auto picks CUDA when available (default: auto)")
    parser.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=None,
                        help="average the prediction with that of the left-right mirrored image (twice the "
                             "network time; default: on for brain-tissue, off for brain-mask)")
    parser.add_argument("--skull-stripped", action=argparse.BooleanOptionalAction, default=None,
                        help="brain-tissue: the input is already skull-stripped (no SkullStrip; the brain mask is "
                             "its voxels above the background) / is a whole head (SkullStrip first); default: "
                             "decided from the image (at least 25%% of the voxels at its minimum and at most "
                             "3000 mL above it: skull-stripped)")
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
    from ..models.pretrained import load_pretrained, resolve_device
    from ..models.skull_strip import SkullStrip
    from ..transforms.io import LoadImage

    device = resolve_device(args.device, "--device")
    qc_path, volumes_path = default_paths(args.output)
    qc_path, volumes_path = args.qc or qc_path, args.volumes or volumes_path
    outputs = {"OUTPUT": args.output, "--qc": qc_path, "--volumes": volumes_path}
    _check_paths(args.input, outputs)
    timer = _Timings(device)
    print(f"gpuprep segment: {args.input} -> {args.output} (device {device})")
    sample = timer.timed("load image", LoadImage("image", dtype="float32"), {"image": str(args.input)})
    model = timer.timed("load model", load_pretrained, args.weights or args.task or "brain-tissue", device)
    task = model.spec["task"]
    if args.task is not None and task != args.task:
        raise ConfigError(f"--task {args.task} was asked for, but the checkpoint {args.weights} is for {task!r}")
    flip = {} if args.flip_average is None else {"flip_average": args.flip_average}
    sample = {**sample, "image": sample["image"].to(device)}
    image = sample["image"]  # the input as read: the QC shows the labels on it
    skull_strip = None
    with window_progress(args.progress) as progress:
        if task == "brain-mask":
            transform = SkullStrip("image", mask_key=LABEL_KEY, model=model, apply=False, device=device,
                                   progress=progress, **flip)
            sample = timer.timed("skull strip", transform, sample)
        else:
            sample, transform, skull_strip = _segment_tissue(sample, model, args, timer, progress, flip)
    summary = {"input": str(args.input), "output": str(args.output), "qc": str(qc_path), "task": task,
               "model": transform.model_name, "weights_sha256": transform.weights_sha256, "device": str(device)}
    report = _write_outputs(sample, image, model.spec["labels"], outputs, summary, skull_strip, timer)
    print(f"  {'total':<16s} {timer.seconds['total'] * 1000:9.1f} ms")
    for name, entry in report["labels"].items():
        print(f"  {name:<16s} {entry['voxels']:9d} voxels {entry['volume_ml']:10.2f} mL")
    print(f"done: {args.output}, {qc_path}, {volumes_path}")
    return 0


class _Timings:
    """The seconds of each stage of a run (summed by name), printed as each stage ends; starts the clock."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def record(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name`` and print them."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        print(f"  {name:<16s} {seconds * 1000:9.1f} ms", flush=True)

    def timed(self, name: str, function: Callable, *arguments, **options):
        """Call ``function`` and record its time as stage ``name`` (after the GPU finished its work)."""
        import torch

        start = time.perf_counter()
        result = function(*arguments, **options)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.record(name, time.perf_counter() - start)
        return result


def _segment_tissue(sample: dict, model: torch.nn.Module, args: argparse.Namespace, timer: _Timings,
                    progress: Callable[[int, int], None], flip: dict) -> tuple[dict, Any, dict]:
    """Brain-tissue: a brain mask (the foreground of a skull-stripped input, else SkullStrip), then SegmentBrain.

    Returns the sample with both label maps, the SegmentBrain step and the ``skull_strip`` entry of the report.
    """
    import numpy as np

    from ..models.inference import SegmentBrain
    from ..models.skull_strip import SkullStrip
    from ..sample import get_affine
    from ..transforms.mask.foreground import ForegroundMask

    image, device = sample["image"], timer.device
    stripped, reason = skull_stripped(image, get_affine(sample, "image"), args.skull_stripped)
    if stripped:
        print(f"  input is skull-stripped ({reason}): no SkullStrip; brain mask = voxels above "
              f"the background (--no-skull-stripped to skull-strip it)", flush=True)
        background = float(image.min())
        mask_step = ForegroundMask("image", mask_key=MASK_KEY, method=background, largest_component=False,
                                   fill_holes=True)
        sample = timer.timed("foreground mask", mask_step, sample)
    else:
        print(f"  input is a whole head ({reason}): SkullStrip first (--skull-stripped to skip it)", flush=True)
        # By name, so that the history can be replayed: the bundled brain-mask weights.
        mask_step = timer.timed("load mask model", SkullStrip, "image", mask_key=MASK_KEY, model="brain-mask",
                                apply=True, device=device, progress=progress)
        sample = timer.timed("skull strip", mask_step, sample)
    stages = {"network": "tissue network", "refine": "refinement"}
    transform = SegmentBrain("image", output_key=LABEL_KEY, model=model, device=device, refine=args.refine,
                             mask_key=MASK_KEY, progress=progress,
                             timer=lambda stage, seconds: timer.record(stages[stage], seconds), **flip)
    sample = transform(sample)
    voxel_mm3 = abs(float(np.linalg.det(get_affine(sample, MASK_KEY).numpy()[:3, :3])))
    skull_strip = {"skull_stripped_input": stripped, "reason": reason, "ran": not stripped,
                   "mask_step": type(mask_step).__name__,
                   "brain_mask_ml": int(sample[MASK_KEY].count_nonzero()) * voxel_mm3 / 1000.0}
    if isinstance(mask_step, SkullStrip):  # the whole head was skull-stripped with the shipped weights
        skull_strip.update(model=mask_step.model_name, weights_sha256=mask_step.weights_sha256)
    return sample, transform, skull_strip


def _write_outputs(sample: dict, image: torch.Tensor, names: dict[str, str], outputs: dict[str, Path],
                   summary: dict, skull_strip: dict | None, timer: _Timings) -> dict:
    """Write the label map, the QC PNG and the volumes JSON (all or none of them); return the volumes.

    ``summary`` holds the report's first fields (input, output, qc, task, model, weights, device).
    """
    from ..io.atomic import atomic_write_bytes
    from ..io.overlay import save_overlay
    from ..io.writer import write_image
    from ..records import to_json
    from ..sample import get_affine, get_history, get_meta

    labels = sample[LABEL_KEY].cpu()
    affine = get_affine(sample, LABEL_KEY)
    meta = get_meta(sample, "image")
    qform = meta.get("qform_code")
    report = _volumes(labels, affine, names)
    with _all_or_nothing(outputs.values()):
        timer.timed("write NIfTI", write_image, outputs["OUTPUT"], labels, affine, sidecar=False, qform_code=qform,
                    sform_code=meta.get("sform_code") or qform or None)
        timer.timed("QC PNG", save_overlay, outputs["--qc"], image, labels, affine, names=names,
                    title=summary["task"])
        timer.seconds["total"] = time.perf_counter() - timer.started
        summary = {
            **summary, "shape": list(labels.shape[1:]), "affine": affine, **report,
            **({"skull_strip": skull_strip} if skull_strip is not None else {}),
            "timings_s": {name: round(seconds, 4) for name, seconds in timer.seconds.items()},
            "gpuprep_version": __version__, "history": get_history(sample),
        }
        atomic_write_bytes(outputs["--volumes"], (json.dumps(to_json(summary), indent=2) + "\n").encode())
    return report


def skull_stripped(image: torch.Tensor, affine: torch.Tensor, told: bool | None) -> tuple[bool, str]:
    """Whether ``image`` ``[C, D, H, W]`` is to be taken as skull-stripped, and why.

    ``told`` (``--skull-stripped`` / ``--no-skull-stripped``) decides when given. Otherwise the
    image counts as skull-stripped when at least :data:`STRIPPED_MIN_BACKGROUND` of its voxels
    hold exactly its minimum (a constant background, as brain extraction leaves) and the voxels
    above it fill at most :data:`STRIPPED_MAX_FOREGROUND_ML` (a brain; a head is larger). Heads
    whose air is exactly 0 (common after conforming or defacing) fail the second test.

    Example
    -------
    >>> import torch
    >>> brain = torch.zeros(1, 200, 200, 200); brain[:, 50:150, 40:160, 60:140] = 1.0  # 960 mL, 1 mm
    >>> skull_stripped(brain, torch.eye(4), None)
    (True, '88 % of the voxels at the minimum 0, 960 mL above it')
    >>> skull_stripped(brain + torch.rand(brain.shape), torch.eye(4), None)[0]
    False
    """
    import numpy as np

    if told is not None:
        return told, "as told (--skull-stripped)" if told else "as told (--no-skull-stripped)"
    background = image.min()
    above = (image > background).any(dim=0)
    share = 1.0 - float(above.float().mean())
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))
    foreground_ml = int(above.count_nonzero()) * voxel_mm3 / 1000.0
    reason = f"{share * 100:.0f} % of the voxels at the minimum {float(background):g}, {foreground_ml:.0f} mL above it"
    return share >= STRIPPED_MIN_BACKGROUND and foreground_ml <= STRIPPED_MAX_FOREGROUND_ML, reason


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
