"""``gpuprep register FIXED MOVING OUTPUT``: align MOVING to FIXED and write the warped image with its transform.

OUTPUT is the moving image resampled onto the fixed grid (its folder is made if needed). Beside
it, named after OUTPUT's stem:

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
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

MODELS = ("rigid", "affine", "deformable")
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
    parser.add_argument("fixed", type=Path, metavar="FIXED", help="the reference image (its grid is the output's)")
    parser.add_argument("moving", type=Path, metavar="MOVING", help="the image to align")
    parser.add_argument("output", type=Path, metavar="OUTPUT", help="the warped image to write (.nii.gz, .nii, .mgz)")
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
    paths = output_paths(args.output, args.model)
    if not args.moving.exists():
        raise FileNotFoundError(f"MOVING image not found: {args.moving}")
    _check_paths(args.fixed, {name: path for name, path in paths.items() if name != "json"})
    print(f"gpuprep register: {args.moving} -> {args.fixed} ({args.model}, {args.metric}, device {device})")
    started = time.perf_counter()
    fixed, fixed_meta = read_image(args.fixed, dtype="float32")
    moving, moving_meta = read_image(args.moving, dtype="float32")
    result = register(fixed[:1].to(device), moving[:1].to(device), model=args.model, metric=args.metric,
                      fixed_affine=fixed_meta["affine"], moving_affine=moving_meta["affine"])
    for level, losses in enumerate(result.metric_history):
        print(f"  level {level + 1}/{len(result.metric_history)}: loss {losses[0]:.5f} -> {losses[-1]:.5f}")
    print(f"  registration {result.seconds:.2f} s")
    warped, points_mm = _warped(moving[:1].to(device), moving_meta["affine"], fixed.shape[1:], fixed_meta["affine"],
                                result)
    with _all_or_nothing(paths.values()):
        _write(paths, args, fixed[:1], fixed_meta["affine"], warped, points_mm, result, started)
    print("done: " + ", ".join(str(p) for p in paths.values()))
    return 0


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
    report = {"fixed": str(args.fixed), "moving": str(args.moving), "output": str(paths["OUTPUT"]),
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
