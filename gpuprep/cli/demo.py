"""``gpuprep demo``: run the default brain-MRI pipeline on the bundled sample or your files.

For each input it writes the preprocessed NIfTI file(s), a JSON sidecar with the full history
(provenance), the pipeline as YAML, and a PNG montage: three orthogonal slices before and
after, with the N4 bias field between them, all rows cut through the centre of the input's
field of view and drawn at the same scale, so that they show the same anatomy at the same place
(with L/R, A/P, S/I letters). It prints the device and the time of every step.

Outputs are named after the input's full file name without its image extension (the stem) and
the key: ``<stem>_preprocessed.nii.gz`` (the image), ``<stem>_foreground_preprocessed.nii.gz``
(the head mask), ``<stem>_bias_field_preprocessed.nii.gz`` (the N4 bias field that was divided
out), ``<stem>_pipeline.yaml``, ``<stem>_qc.png`` (input, bias field, output). Inputs from different folders keep
their folders relative to the inputs' common folder, so ``site1/T1.nii.gz`` and ``site2/T1.nii.gz``
give ``OUTPUT/site1/T1_preprocessed.nii.gz`` and ``OUTPUT/site2/T1_preprocessed.nii.gz``. All
outputs are checked before any work: colliding outputs and existing files (unless ``--overwrite``)
are refused.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch and gpuprep's IO and transforms are imported where they are used: building the parser
# (``gpuprep --help``) must stay fast.

DEFAULT_OUTPUT = "gpuprep-demo"
#: Key of the foreground mask the pipeline makes, and the suffix of every preprocessed file.
MASK_KEY = "foreground"
FIELD_KEY = "bias_field"
SUFFIX = "_preprocessed"


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
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier run (default: refuse existing files; a JSON "
                             "file that gpuprep did not write is never replaced)")
    parser.set_defaults(run=run)


def resolve_device(name: str) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda`` into a device, with a clear error when CUDA is missing."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA device here")
    return torch.device(name)


def run(args: argparse.Namespace) -> int:
    """Preprocess every input and print where the outputs went."""
    from tqdm import tqdm

    from ..data.sample_data import sample_brain_paths
    from ..io.outputs import check_output_folder, make_folders, remove_empty_folders

    device = resolve_device(args.device)
    if args.input:
        jobs = [{"image": str(path)} for path in args.input]
        label_keys: list[str] = []
    else:
        paths = sample_brain_paths()
        jobs = [{key: str(path) for key, path in paths.items()}]
        label_keys = [key for key in paths if key != "image"]
    check_output_folder(args.output, "--output", probe=True)
    folders = output_folders([Path(job["image"]) for job in jobs], args.output)
    _check_outputs(jobs, label_keys, folders, args.overwrite)
    print(f"gpuprep demo: device {device}, {len(jobs)} input(s), output folder {args.output}")
    created: list[Path] = []
    try:
        progress = tqdm(list(zip(jobs, folders)), desc="preprocessing", unit="image", disable=len(jobs) < 2)
        for job, folder in progress:
            created += make_folders(folder)
            _process(job, label_keys, device, folder, args.overwrite, verbose=len(jobs) == 1)
    except BaseException:
        remove_empty_folders(sorted(created, key=lambda p: len(p.parts), reverse=True))
        raise
    print(f"done: outputs in {args.output.resolve()}")
    return 0


def output_folders(inputs: list[Path], output: Path) -> list[Path]:
    """The output folder of each input: its folder's path relative to the inputs' common folder, under ``output``.

    Inputs from one folder all go straight into ``output``; ``site1/T1.nii.gz`` and
    ``site2/T1.nii.gz`` go to ``output/site1`` and ``output/site2``, so they cannot collide.

    Example
    -------
    >>> [p.as_posix() for p in output_folders([Path("/d/site1/T1.nii.gz"), Path("/d/site2/T1.nii.gz")], Path("o"))]
    ['o/site1', 'o/site2']
    """
    parents = [path.resolve().parent for path in inputs]
    common = Path(os.path.commonpath(parents))
    return [output / parent.relative_to(common) for parent in parents]


def output_names(job: dict, label_keys: list[str]) -> list[str]:
    """The names of the files written for one input: each output is named after its input's full stem and its key.

    The image keeps ``<stem>_preprocessed.nii.gz``, a label map loaded from its own file keeps
    that file's stem, the foreground mask made from the image is ``<stem>_foreground_preprocessed`` and
    its N4 bias field ``<stem>_bias_field_preprocessed``.

    Example
    -------
    >>> output_names({"image": "/d/sub-01.ses-x_T1w.nii.gz"}, [])[:2]
    ['sub-01.ses-x_T1w_preprocessed.nii.gz', 'sub-01.ses-x_T1w_preprocessed.json']
    """
    from ..io.sidecar import strip_image_extension

    stem = strip_image_extension(Path(job["image"]).name)
    stems = [strip_image_extension(Path(job[key]).name) for key in ["image", *label_keys]]
    stems += [f"{stem}_{MASK_KEY}", f"{stem}_{FIELD_KEY}"]
    names = [f"{name}{SUFFIX}{extension}" for name in stems for extension in (".nii.gz", ".json")]
    return [*names, f"{stem}_pipeline.yaml", f"{stem}_qc.png"]


def _check_outputs(jobs: list[dict], label_keys: list[str], folders: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, inputs whose outputs would collide and outputs that exist (without --overwrite)."""
    from ..io.outputs import check_output_file

    claimed: dict[Path, str] = {}
    for job, folder in zip(jobs, folders):
        for name in output_names(job, label_keys):
            target = (folder / name).resolve()
            if target in claimed:
                raise ConfigError(
                    f"--input {claimed[target]} and {job['image']} would both be written to {folder / name}; "
                    "give each input once, with distinct file names within a folder"
                )
            claimed[target] = job["image"]
            check_output_file(folder / name, overwrite=overwrite, sidecar=name.endswith(".json"),
                              fix="pass --overwrite")


def _process(job: dict, label_keys: list[str], device: torch.device, output: Path, overwrite: bool,
             verbose: bool) -> None:
    import torch

    from ..io.montage import save_montage
    from ..io.sidecar import strip_image_extension
    from ..sample import get_affine, image_keys
    from ..transforms.io import LoadImage, SaveImage
    from ..transforms.presets import brain_mri_preprocessing

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
    pipeline = brain_mri_preprocessing(image_keys=["image"], label_keys=label_keys, mask_key=MASK_KEY,
                                       bias_field_key=FIELD_KEY)
    for transform in pipeline.transforms:
        sample = timed(type(transform).__name__, transform, sample)
    stem = strip_image_extension(Path(job["image"]).name)
    saved = keys + [key for key in image_keys(sample) if key not in keys]
    timed("save NIfTI + JSON", SaveImage(saved, output_dir=output, suffix=SUFFIX, overwrite=overwrite), sample)
    pipeline.to_yaml(output / f"{stem}_pipeline.yaml")
    timed("QC montage", save_montage, output / f"{stem}_qc.png",
          [("input", *before), ("N4 bias field", sample[FIELD_KEY], get_affine(sample, FIELD_KEY)),
           ("preprocessed", sample["image"], get_affine(sample, "image"))])
    if verbose:
        for name, seconds in timings:
            print(f"  {name:<22s} {seconds * 1000:8.1f} ms")
        print(f"  {'total':<22s} {sum(s for _, s in timings) * 1000:8.1f} ms")


def _to_device(sample: dict, keys: list[str], device: torch.device) -> dict:
    return {**sample, **{key: sample[key].to(device, non_blocking=True) for key in keys}}
