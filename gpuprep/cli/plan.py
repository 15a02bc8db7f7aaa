"""``gpuprep plan INPUT... --output plan.yaml``: choose the preprocessing pipeline from the data.

Reads every image (and label map) of a dataset, writes its fingerprint (``fingerprint.json``
beside the plan, or ``--fingerprint``: per file the shape, spacing, orientation, dtype,
anisotropy, modality and foreground intensity percentiles; dataset summaries) and a pipeline
YAML that ``gpuprep run`` and ``gpuprep.Compose.from_yaml`` take: reorientation to RAS, a crop to
the foreground, the normalisation (CT: clip to the dataset's foreground 0.5-99.5 percentiles,
then its mean and standard deviation; MRI: per-image z-score) and resampling to the target
spacing (the median, with nnU-Net's rule for one much coarser axis). The YAML's ``plan`` section
also gives the patch and batch sizes of a 3D U-Net that fit ``--gpu-memory-gb``. The rules are
nnU-Net v2's experiment planner's; see the how-to page "Plan a pipeline from the data".

INPUT is image files, a folder (every image under it, recursively, or those matching
``--pattern``; ``--label-pattern`` pairs label maps by the part the wildcards match), a CSV/TSV
table (its columns of image paths; the label column is ``--label-key`` or the first of label,
seg, dseg, labels, mask) or a BIDS root (``--bids-image``, ``--bids-label``). Label maps define
the foreground of the intensity statistics (nnU-Net's rule); without them, it is the voxels above
each image's Otsu threshold. The modality comes from the BIDS suffix (``_CT``, ``_T1w``...) or
from the intensities (CT: Hounsfield units, air at -1000), or from ``--modality``.

Inputs are only read and never overwritten. Both outputs are written atomically; an existing
plan is replaced only when ``gpuprep plan`` wrote it, unless ``--overwrite``; a JSON file that
gpuprep did not write (a BIDS sidecar, say) is never replaced.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, OutputExistsError

_TABLES = (".csv", ".tsv")
_YAML = (".yaml", ".yml")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``plan`` sub-command."""
    parser = commands.add_parser(
        "plan", help="fingerprint a dataset and write the pipeline YAML chosen from it (nnU-Net's planning rules)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                        help="image files, or one folder, CSV/TSV table or BIDS root")
    parser.add_argument("--output", "-o", type=Path, required=True, metavar="PLAN.yaml",
                        help="the pipeline YAML to write (.yaml or .yml)")
    parser.add_argument("--fingerprint", type=Path, metavar="JSON",
                        help="where to write the fingerprint (default: fingerprint.json beside the plan)")
    parser.add_argument("--pattern", metavar="GLOB",
                        help="folder INPUT: the images, e.g. '*_T1w.nii.gz' (at any depth unless it has a /)")
    parser.add_argument("--label-pattern", metavar="GLOB",
                        help="folder INPUT: the label maps, e.g. '*_dseg.nii.gz' (needs --pattern)")
    parser.add_argument("--label-key", metavar="KEY", help="CSV INPUT: the label column (default: label, seg, ...)")
    parser.add_argument("--bids-image", default="T1w", metavar="SUFFIX", help="BIDS INPUT: image suffix (default T1w)")
    parser.add_argument("--bids-label", metavar="SUFFIX", help="BIDS INPUT: label suffix, e.g. dseg")
    parser.add_argument("--modality", choices=("auto", "ct", "mri"), default="auto",
                        help="ct or mri for every image, or auto: from the BIDS suffix or the intensities")
    parser.add_argument("--gpu-memory-gb", type=gpu_memory, default=8.0, metavar="GB",
                        help="GPU memory for the U-Net's patch size (default: 8, as nnU-Net)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing plan that gpuprep plan did not write (a JSON file gpuprep did not "
                             "write is never replaced)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show the files read on stderr (default: when stderr is a terminal)")
    parser.set_defaults(run=run)


def gpu_memory(text: str) -> float:
    """Parse ``--gpu-memory-gb``: a number of GB above 0.

    Example
    -------
    >>> gpu_memory("11")
    11.0
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of GB above 0, got {text!r}")
    return value


def plan_records(inputs: list[Path], pattern: str | None = None, label_pattern: str | None = None,
                 bids_image: str = "T1w", bids_label: str | None = None) -> list[dict]:
    """The records of INPUT, built with :mod:`gpuprep.data.records` (the same rules as the Python API).

    Image files give ``{"image": path}`` each; a folder is searched recursively (``pattern`` and
    ``label_pattern`` without a ``/`` match at any depth); a BIDS root (``dataset_description.json``
    or ``sub-*/anat`` folders) is read with ``records_from_bids``; a table with ``records_from_csv``.

    Example
    -------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["a/x_T1w.nii.gz", "a/x_dseg.nii.gz", "b/y_T1w.nii.gz", "b/y_dseg.nii.gz"]:
    ...     (root / name).parent.mkdir(exist_ok=True); _ = (root / name).write_bytes(b"")
    >>> records = plan_records([root], "*_T1w.nii.gz", "*_dseg.nii.gz")
    >>> [(Path(r["image"]).name, Path(r["label"]).name) for r in records]
    [('x_T1w.nii.gz', 'x_dseg.nii.gz'), ('y_T1w.nii.gz', 'y_dseg.nii.gz')]
    """
    from ..data.records import is_image_path, records_from_bids, records_from_csv

    for path in inputs:
        if not path.exists():
            raise FileNotFoundError(f"INPUT {path}: no such file or folder")
    if label_pattern is not None and pattern is None:
        raise ConfigError(f"--label-pattern {label_pattern!r} needs --pattern (the images' pattern), got none")
    single = inputs[0] if len(inputs) == 1 else None
    if (pattern or label_pattern) and (single is None or not single.is_dir()):
        raise ConfigError(f"--pattern {pattern!r}: a pattern selects files in one folder INPUT, got "
                          f"{len(inputs)} input(s) starting with {inputs[0]}")
    if single is not None and single.is_dir():
        if pattern is None and _is_bids(single):
            return records_from_bids(single, image=bids_image, label=bids_label)
        return _folder_records(single, pattern, label_pattern)
    if single is not None and single.name.lower().endswith(_TABLES):
        return records_from_csv(single)
    for path in inputs:
        if path.is_dir() or not is_image_path(str(path)) or path.name.lower().endswith(_TABLES):
            raise ConfigError(f"INPUT {path}: not an image file among {len(inputs)} inputs; give image files, or "
                              "one folder, BIDS root or .csv/.tsv table")
    return [{"image": str(path)} for path in inputs]


def _is_bids(root: Path) -> bool:
    return (root / "dataset_description.json").is_file() or any(
        p.is_dir() for p in [*root.glob("sub-*/anat"), *root.glob("sub-*/ses-*/anat")])


def _folder_records(root: Path, pattern: str | None, label_pattern: str | None) -> list[dict]:
    """Every image under ``root`` (or those matching the patterns), paired with its label map by identifier."""
    from ..data.records import is_image_path, records_from_folder
    from ..errors import DatasetError

    def glob(text: str) -> str:
        if not any(c in text for c in "*?"):
            raise ConfigError(f"--pattern / --label-pattern must contain a wildcard (* or ?), got {text!r}")
        return text if "/" in text else f"**/{text}"

    patterns = {"image": glob(pattern) if pattern else "**/*"}
    if label_pattern is not None:
        patterns["label"] = glob(label_pattern)
    try:
        found = records_from_folder(root, patterns)
    except DatasetError:
        if label_pattern is not None:
            raise
        found = []
    records = [{k: r[k] for k in patterns} for r in found
               if is_image_path(r["image"]) and not r["image"].lower().endswith(".dcm")]
    if not records:
        raise ConfigError(f"INPUT {root}: no image file {'matching --pattern ' + repr(pattern) if pattern else ''} "
                          "in the folder or its subfolders")
    return records


def _written_by_gpuprep(path: Path) -> bool:
    """Whether ``path`` is a plan YAML or fingerprint JSON that gpuprep wrote."""
    from ..io.outputs import written_by_gpuprep
    from ..io.safe_yaml import load_yaml

    if path.suffix.lower() == ".json":
        return written_by_gpuprep(path)
    try:
        content = load_yaml(path.read_text(encoding="utf-8", errors="replace")[:16 * 1024 * 1024], str(path))
    except (OSError, ConfigError):
        return False
    return isinstance(content, dict) and "gpuprep_pipeline" in content and "plan" in content


def check_outputs(outputs: dict[str, Path], records: list[dict], inputs: list[Path], overwrite: bool) -> None:
    """Refuse outputs that are inputs, the same file twice, in an unusable folder, or files gpuprep did not write.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> check_outputs({"--output": folder / "plan.yaml"}, [{"image": str(folder / "a.nii")}], [], False)
    """
    from ..data.records import is_image_path
    from ..io.outputs import check_output_file

    read = {Path(os.path.realpath(v)): f"input {v}" for r in records for v in r.values() if is_image_path(v)}
    read.update({Path(os.path.realpath(p)): f"INPUT {p}" for p in inputs})
    seen: dict[Path, str] = {}
    for name, path in outputs.items():
        real = Path(os.path.realpath(path))
        if real in read:
            raise ConfigError(f"{name} {path} is {read[real]}; choose another path (inputs are never overwritten)")
        if real in seen:
            raise ConfigError(f"{name} {path} is the same file as {seen[real]}; choose another path")
        seen[real] = name
        # A JSON file gpuprep did not write (a BIDS sidecar, say) is never replaced, as everywhere in gpuprep.
        check_output_file(path, overwrite=True, sidecar=path.suffix.lower() == ".json", probe=True)
        if path.exists() and not overwrite and not _written_by_gpuprep(path):
            raise OutputExistsError(f"{name} {path}: the file exists and gpuprep did not write it; pass --overwrite "
                                    f"to replace it")


def output_paths(output: Path, fingerprint: Path | None) -> dict[str, Path]:
    """The plan and fingerprint paths, checked by their extensions.

    Example
    -------
    >>> sorted(p.name for p in output_paths(Path("work/plan.yaml"), None).values())
    ['fingerprint.json', 'plan.yaml']
    """
    if not output.name.lower().endswith(_YAML):
        raise ConfigError(f"--output {output}: the plan must be a .yaml or .yml file")
    fingerprint = fingerprint if fingerprint is not None else output.with_name("fingerprint.json")
    if not fingerprint.name.lower().endswith(".json"):
        raise ConfigError(f"--fingerprint {fingerprint}: the fingerprint must be a .json file")
    return {"--output": output, "--fingerprint": fingerprint}


def run(args: argparse.Namespace) -> int:
    """Fingerprint INPUT, plan the pipeline, write both files and print a summary."""
    from tqdm import tqdm

    from ..data.fingerprint import fingerprint_dataset
    from ..data.planning import plan_dataset
    from .segment import _all_or_nothing

    outputs = output_paths(args.output, args.fingerprint)
    records = plan_records(args.inputs, args.pattern, args.label_pattern, args.bids_image, args.bids_label)
    check_outputs(outputs, records, args.inputs, args.overwrite)
    print(f"gpuprep plan: {len(records)} case(s) -> {args.output}", flush=True)
    with tqdm(total=len(records), desc="fingerprint", unit="case", disable=None if args.progress is None
              else not args.progress) as bar:
        fingerprint = fingerprint_dataset(records, label_key=args.label_key,
                                          modality=None if args.modality == "auto" else args.modality,
                                          progress=lambda done, total: bar.update(done - bar.n))
    plan = plan_dataset(fingerprint, args.gpu_memory_gb)
    with _all_or_nothing(outputs.values()):
        write_json(outputs["--fingerprint"], fingerprint)
        write_plan(outputs["--output"], plan, outputs["--fingerprint"], len(records))
    dataset = fingerprint["dataset"]
    print(f"  modality          {', '.join(f'{k}: {m}' for k, m in dataset['modality'].items())}")
    print(f"  median spacing    {_mm(dataset['spacing_ras']['median'])} (R, A, S)")
    print(f"  target spacing    {_mm(plan.target_spacing)}")
    for key, norm in plan.normalization.items():
        print(f"  normalisation     {key}: {norm['scheme']}" + (" (nonzero mask)" if norm["use_mask_for_norm"] else ""))
    print(f"  patch size        {plan.patch_size} (batch {plan.batch_size}, {plan.gpu_memory_gb:g} GB)")
    print(f"done: {outputs['--output']}, {outputs['--fingerprint']}")
    return 0


def _mm(values: list[float]) -> str:
    return " x ".join(f"{v:.4g}" for v in values) + " mm"


def _json_ready(value: Any) -> Any:
    """``value`` with NaN and infinities as None, so that the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_json(path: Path, content: dict) -> None:
    """Write ``content`` as strict JSON, atomically."""
    from ..io.atomic import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(_json_ready(content), indent=1, allow_nan=False) + "\n").encode())


def write_plan(path: Path, plan: Any, fingerprint: Path, cases: int) -> None:
    """Write the pipeline YAML with the plan's summary under ``plan``, atomically; checked to load first."""
    from ..io.atomic import atomic_write_bytes
    from ..io.safe_yaml import dump_yaml
    from ..transforms.compose import Compose

    config = {**plan.pipeline.get_config(), "plan": {**plan.summary(), "cases": cases,
                                                     "fingerprint": os.path.relpath(fingerprint, path.parent)}}
    text = (f"# Written by gpuprep plan from {cases} case(s); the fingerprint is {fingerprint.name}.\n"
            "# The transforms are the pipeline (Compose.from_yaml); 'plan' documents the choices.\n"
            + dump_yaml(_json_ready(config)))
    Compose.from_yaml(text)
    atomic_write_bytes(path, text.encode())
