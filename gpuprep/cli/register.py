"""``gpuprep register FIXED MOVING OUTPUT``: align MOVING to FIXED and write the warped image with its transform.

OUTPUT is the moving image resampled onto the fixed grid (its folder is made if needed). With
``--template mni`` there is no FIXED: the reference is the MNI152 2009a T1 shipped with gpuprep
(2 mm, brain only, so register a skull-stripped scan); ``--template mni-1mm`` is nilearn's 1 mm
copy (needs nilearn). A bar on stderr follows the iterations of every level (``--progress``;
by default only on a terminal). Beside OUTPUT, named after its stem:

- ``<stem>_affine.tfm`` and ``<stem>_affine.mat``: the affine (fixed world to moving world) as
  ITK text and binary files, which ANTs and SimpleITK read (``antsApplyTransforms -t``,
  ``sitk.ReadTransform``);
- with ``--model deformable``, ``<stem>_warp.nii.gz``: the whole map as one displacement field on
  the fixed grid (ANTs' layout: the affine included, so it applies alone);
- ``<stem>_qc.png``: the fixed image, the warped moving image and a checkerboard of the two, in
  three planes;
- ``<stem>.json``: the model, metric, the final loss of each level, the matrix and the times.

Every output is checked before any work; on failure the new files are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

MODELS = ("rigid", "affine", "deformable")
#: ``--template`` names and what they are.
TEMPLATES = {"mni": "MNI152 2009a T1, 2 mm (gpuprep's sample brain)", "mni-1mm": "MNI152 2009a T1, 1 mm (nilearn)"}
METRICS = ("mi", "ncc", "mse")
CHECKER_VOXELS = 16


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``register`` sub-command."""
    parser = commands.add_parser(
        "register",
        help="register MOVING to FIXED; write the warped image, ITK/ANTs transform files, a QC PNG and a JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", type=Path, nargs="+", metavar="[FIXED] MOVING OUTPUT",
                        help="the reference image (its grid is the output's; left out with --template), the image "
                             "to align and the warped image to write (.nii.gz, .nii, .mgz)")
    parser.add_argument("--template", choices=tuple(TEMPLATES), default=None,
                        help="register to a template instead of FIXED: mni (MNI152 2009a T1, 2 mm, shipped) or "
                             "mni-1mm (nilearn's 1 mm copy)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar of the iterations (default: only when stderr is a terminal)")
    parser.add_argument("--model", choices=MODELS, default="affine", help="default: affine")
    parser.add_argument("--metric", choices=METRICS, default="mi",
                        help="mi (any two contrasts, default), ncc or mse (same contrast)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto picks CUDA when available (default: auto)")
    parser.set_defaults(run=run)


def output_paths(output: Path, model: str) -> dict[str, Path]:
    """Every file the command writes, by role.

    Example
    -------
    >>> sorted(p.name for p in output_paths(Path("out/t2_in_t1.nii.gz"), "affine").values())
    ['t2_in_t1.json', 't2_in_t1.nii.gz', 't2_in_t1_affine.mat', 't2_in_t1_affine.tfm', 't2_in_t1_qc.png']
    """
    from ..io.sidecar import strip_image_extension

    stem = strip_image_extension(output.name)
    paths = {"OUTPUT": output, "tfm": output.with_name(f"{stem}_affine.tfm"),
             "mat": output.with_name(f"{stem}_affine.mat"), "qc": output.with_name(f"{stem}_qc.png"),
             "json": output.with_name(f"{stem}.json")}
    if model == "deformable":
        paths["warp"] = output.with_name(f"{stem}_warp.nii.gz")
    return paths


def run(args: argparse.Namespace) -> int:
    """Register, then write the warped image, the transform files, the QC PNG and the JSON."""
    import torch

    from ..io.reader import read_image
    from ..registration import register
    from .segment import _all_or_nothing, _check_paths

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    args.fixed, args.moving, args.output = _positionals(args.images, args.template)
    paths = output_paths(args.output, args.model)
    if not args.moving.exists():
        raise FileNotFoundError(f"MOVING image not found: {args.moving}")
    _check_paths(args.moving if args.fixed is None else args.fixed,
                 {name: path for name, path in paths.items() if name != "json"})
    for name, path in paths.items():
        if path.resolve() == args.moving.resolve():
            raise ConfigError(f"{name} {path} is the MOVING image; choose another path (inputs are never overwritten)")
    reference = args.fixed if args.fixed is not None else f"template {args.template} ({TEMPLATES[args.template]})"
    print(f"gpuprep register: {args.moving} -> {reference} ({args.model}, {args.metric}, device {device})")
    started = time.perf_counter()
    fixed, fixed_affine = _fixed_image(args.fixed, args.template)
    moving, moving_meta = read_image(args.moving, dtype="float32")
    with _iteration_bar(args.progress) as progress:
        result = register(fixed[:1].to(device), moving[:1].to(device), model=args.model, metric=args.metric,
                          fixed_affine=fixed_affine, moving_affine=moving_meta["affine"], progress=progress)
    for level, losses in enumerate(result.metric_history):
        print(f"  level {level + 1}/{len(result.metric_history)}: loss {losses[0]:.5f} -> {losses[-1]:.5f}")
    print(f"  registration {result.seconds:.2f} s")
    warped, points_mm = _warped(moving[:1].to(device), moving_meta["affine"], fixed.shape[1:], fixed_affine, result)
    with _all_or_nothing(paths.values()):
        _write(paths, args, fixed[:1], fixed_affine, warped, points_mm, result, started)
    print("done: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _positionals(images: list[Path], template: str | None) -> tuple[Path | None, Path, Path]:
    """``(FIXED or None, MOVING, OUTPUT)`` from the positional paths: three, or two with ``--template``."""
    wanted = 2 if template is not None else 3
    if len(images) != wanted:
        form = "MOVING OUTPUT with --template" if template is not None else "FIXED MOVING OUTPUT"
        raise ConfigError(f"gpuprep register takes {form}, got {len(images)} paths: "
                          f"{' '.join(str(p) for p in images)}")
    return (None, *images) if template is not None else tuple(images)  # type: ignore[return-value]


def _fixed_image(path: Path | None, template: str | None):
    """The fixed image ``[C, D, H, W]`` float32 and its affine: the file's, or the template's."""
    from ..io.reader import read_image

    if template == "mni-1mm":
        from ..models.mni import mni_t1

        return mni_t1(1)
    if template == "mni":
        from ..data.sample_data import sample_brain_paths

        path = sample_brain_paths()["image"]
    if path is None:
        raise ConfigError("gpuprep register: give FIXED or --template")
    volume, meta = read_image(path, dtype="float32")
    return volume, meta["affine"]


@contextlib.contextmanager
def _iteration_bar(enabled: bool | None) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(stage, done, total)`` callback drawing one tqdm bar on stderr over every level's iterations."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc="registration", unit="it", file=sys.stderr,
               disable=None if enabled is None else not enabled)

    def progress(stage: str, done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.set_description(stage, refresh=False)
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()


def _warped(moving, moving_affine, fixed_shape, fixed_affine, result) -> tuple[torch.Tensor, torch.Tensor]:
    """The moving image on the fixed grid ``[1, D, H, W]`` and the map's displacement ``[3, D, H, W]`` in RAS mm."""
    import numpy as np
    import torch

    from ..functional.transform_models import sample_world

    affine = torch.as_tensor(np.asarray(fixed_affine), dtype=torch.float64)
    axes = [torch.arange(n, dtype=torch.float64) for n in fixed_shape]
    voxels = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    world = voxels @ affine[:3, :3].T + affine[:3, 3]
    moved = world.clone()
    if result.displacement is not None:
        moved = moved + result.displacement.cpu().double().reshape(3, -1).T
    matrix = torch.as_tensor(result.matrix, dtype=torch.float64)
    mapped = moved @ matrix[:3, :3].T + matrix[:3, 3]
    to_voxel = torch.linalg.inv(torch.as_tensor(np.asarray(moving_affine), dtype=torch.float64))[None]
    values = sample_world(moving[None].float(), to_voxel.to(moving.device), mapped[None].to(moving.device))
    displacement = (mapped - world).T.reshape(3, *fixed_shape).float()
    return values[0].reshape(1, *fixed_shape).cpu(), displacement


def _write(paths, args, fixed, fixed_affine, warped, displacement, result, started) -> None:
    """Write every output (atomically, each)."""
    from ..io.montage import save_montage
    from ..io.transform_files import write_affine, write_displacement_field
    from ..io.writer import write_image

    write_image(paths["OUTPUT"], warped, fixed_affine, overwrite=True)
    write_affine(paths["tfm"], result.matrix, overwrite=True)
    write_affine(paths["mat"], result.matrix, overwrite=True)
    if "warp" in paths:
        write_displacement_field(paths["warp"], displacement, fixed_affine, overwrite=True)
    save_montage(paths["qc"], [("fixed", fixed, fixed_affine), ("moving, warped", warped, fixed_affine),
                               ("checkerboard", _checkerboard(fixed, warped), fixed_affine)])
    fixed_name = str(args.fixed) if args.fixed is not None else f"template:{args.template}"
    report = {"fixed": fixed_name, "moving": str(args.moving), "output": str(paths["OUTPUT"]),
              "model": result.model, "metric": result.metric, "matrix_ras": result.matrix.tolist(),
              "loss_per_level": [[losses[0], losses[-1]] for losses in result.metric_history],
              "registration_seconds": result.seconds, "total_seconds": time.perf_counter() - started,
              "files": {name: str(path) for name, path in paths.items()}}
    from ..io.atomic import atomic_path

    with atomic_path(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2) + "\n")


def _checkerboard(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Blocks of ``CHECKER_VOXELS`` taken alternately from the two images, each scaled to its 1-99th percentiles."""
    import torch

    def scaled(image: torch.Tensor) -> torch.Tensor:
        low, high = torch.quantile(image.flatten()[:: max(1, image.numel() // 100_000)].float(),
                                   torch.tensor([0.01, 0.99]))
        return ((image - low) / (high - low).clamp(min=1e-12)).clamp(0, 1)

    shape = first.shape[1:]
    blocks = [torch.arange(n) // CHECKER_VOXELS for n in shape]
    parity = (blocks[0][:, None, None] + blocks[1][None, :, None] + blocks[2][None, None, :]) % 2 == 0
    if first.shape != second.shape:
        raise ConfigError(f"checkerboard: shapes differ, {tuple(first.shape)} and {tuple(second.shape)}")
    return torch.where(parity, scaled(first), scaled(second))
