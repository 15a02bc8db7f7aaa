"""Check ``gpuprep plan`` against nnU-Net v2's own fingerprint extractor and experiment planner.

Builds small synthetic datasets (CT-like in Hounsfield units and MRI-like with a zero background,
anisotropic: 0.8 x 0.8 mm in-plane, 2.5-5 mm slices, with label maps), plans each with gpuprep
(``gpuprep plan``) and with nnU-Net (``nnUNetv2_extract_fingerprint`` and
``nnUNetv2_plan_experiment``, with ``nnUNet_raw``/``nnUNet_preprocessed`` in a temporary folder)
and prints a table: target spacing, normalisation scheme (and CT statistics), patch and batch
size of the 3d_fullres configuration, gpuprep vs nnU-Net. Exit status 1 when the target
spacing or the normalisation disagree.

nnU-Net and gpuprep's dependencies conflict with nothing, but keep nnU-Net out of gpuprep's own
environment; run this in a separate one::

    python3 -m venv /tmp/nnunet-venv
    /tmp/nnunet-venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/nnunet-venv/bin/pip install nnunetv2 nibabel pyyaml tqdm pillow
    /tmp/nnunet-venv/bin/pip install -e . --no-deps
    /tmp/nnunet-venv/bin/python scripts/check_plan_nnunet.py

Axes: the files are stored in RAS order, so gpuprep's (R, A, S) axes are the files' voxel axes;
nnU-Net (SimpleITK) works on arrays in the reverse order (S, A, R) and moves the coarsest axis
first; its numbers are mapped back to (R, A, S) here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

#: Slice spacings (mm) of the six cases; in-plane 0.8 mm.
SLICES_MM = (2.5, 3.0, 3.0, 3.5, 4.0, 5.0)
IN_PLANE_MM = 0.8
#: name -> (dataset id, modality, shape, margin of the body in-plane)
DATASETS = {
    "CT, 64x64x16": (501, "CT", (64, 64, 16), 6),
    "MRI, 64x64x20": (502, "MRI", (64, 64, 20), 8),
    "CT, 64x64x20": (503, "CT", (64, 64, 20), 6),
}


def synthetic_case(modality: str, shape: tuple[int, int, int], margin: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like (air -1000 HU, soft tissue, bone) or MRI-like (0 outside a brain) volume and its labels 0, 1, 2."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    slices = slice(None) if modality == "CT" else slice(4, nz - 4)  # a CT's body fills the scan's length
    body = (slice(margin, nx - margin), slice(margin, ny - margin), slices)
    label = np.zeros(shape, np.uint8)
    label[nx // 2 - 8:nx // 2 + 6, ny // 2 - 6:ny // 2 + 8, nz // 2 - 3:nz // 2 + 3] = 1
    label[margin + 2:margin + 8, ny // 2 - 4:ny // 2 + 4, :][:, :, body[2]] = 2
    if modality == "CT":
        image = -1000 + rng.normal(0, 15, shape)
        image[body] = 30 + rng.normal(0, 25, image[body].shape)
        image[label == 1] += 60
        image[label == 2] = 900 + rng.normal(0, 150, int((label == 2).sum()))
        return np.round(image).astype(np.int16), label
    image = np.zeros(shape, np.float32)
    image[body] = np.clip(500 + rng.normal(0, 60, image[body].shape), 1, None)
    image[label == 1] *= 1.4
    image[label == 2] *= 0.6
    label[image == 0] = 0
    return image, label


def write_dataset(raw: Path, name: str, dataset_id: int, modality: str, shape, margin: int) -> Path:
    """Write one dataset in nnU-Net's raw layout (imagesTr, labelsTr, dataset.json); return its folder."""
    folder = raw / f"Dataset{dataset_id}_{name.split(',')[0]}{dataset_id}"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for index, slices in enumerate(SLICES_MM):
        image, label = synthetic_case(modality, shape, margin, seed=dataset_id * 100 + index)
        affine = np.diag([IN_PLANE_MM, IN_PLANE_MM, slices, 1.0])
        nib.save(nib.Nifti1Image(image, affine), folder / "imagesTr" / f"case_{index:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / "labelsTr" / f"case_{index:03d}.nii.gz")
    description = {"channel_names": {"0": modality}, "labels": {"background": 0, "organ": 1, "bone": 2},
                   "numTraining": len(SLICES_MM), "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(description, indent=1))
    return folder


def gpuprep_plan(folder: Path, out: Path) -> dict:
    """Run ``gpuprep plan`` on the dataset folder; return the YAML's ``plan`` section."""
    from gpuprep.cli.main import main
    from gpuprep.io.safe_yaml import load_yaml

    status = main(["plan", str(folder), "--pattern", "imagesTr/*_0000.nii.gz", "--label-pattern", "labelsTr/*.nii.gz",
                   "--output", str(out / "plan.yaml"), "--no-progress"])
    if status != 0:
        raise SystemExit(f"gpuprep plan failed with status {status}")
    return load_yaml((out / "plan.yaml").read_text())["plan"]


def nnunet_plan(dataset_id: int, env: dict) -> dict:
    """Run nnU-Net's fingerprint extraction and experiment planning; return its plans in (R, A, S) order."""
    bin_dir = Path(sys.executable).parent
    for command in (["nnUNetv2_extract_fingerprint", "-d", str(dataset_id), "-np", "1", "--no_pbar"],
                    ["nnUNetv2_plan_experiment", "-d", str(dataset_id)]):
        done = subprocess.run([str(bin_dir / command[0]), *command[1:]], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{command[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    folder = next(Path(env["nnUNet_preprocessed"]).glob(f"Dataset{dataset_id}_*"))
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    backward = plans["transpose_backward"]
    full = plans["configurations"]["3d_fullres"]

    def ras(values):  # transposed array axes -> array axes (S, A, R) -> (R, A, S)
        return [values[i] for i in backward][::-1]

    return {"target_spacing": ras(full["spacing"]), "patch_size": ras(full["patch_size"]),
            "batch_size": full["batch_size"], "scheme": full["normalization_schemes"][0],
            "use_mask_for_norm": full["use_mask_for_norm"][0],
            "intensity": plans["foreground_intensity_properties_per_channel"]["0"]}


def table_rows(name: str, mine: dict, theirs: dict) -> tuple[list[tuple[str, str, str, str]], bool]:
    """The table rows of one dataset and whether spacing and normalisation agree."""
    norm = mine["normalization"]["image"]
    spacing_ok = np.allclose(mine["target_spacing"], theirs["target_spacing"], rtol=1e-6, atol=1e-6)
    scheme_ok = norm["scheme"] == theirs["scheme"] and norm["use_mask_for_norm"] == theirs["use_mask_for_norm"]

    def mm(values):
        return " x ".join(f"{v:.4g}" for v in values)

    rows = [(name, "target spacing (R, A, S) mm", mm(mine["target_spacing"]), mm(theirs["target_spacing"])),
            (name, "normalisation (mask)", f"{norm['scheme']} ({norm['use_mask_for_norm']})",
             f"{theirs['scheme']} ({theirs['use_mask_for_norm']})")]
    if norm["scheme"] == "CTNormalization":
        for field in ("mean", "std", "percentile_00_5", "percentile_99_5"):
            rows.append((name, f"CT {field}", f"{norm[field]:.2f}", f"{theirs['intensity'][field]:.2f}"))
    rows += [(name, "patch size (R, A, S)", str(mine["patch_size"]), str(theirs["patch_size"])),
             (name, "batch size", str(mine["batch_size"]), str(theirs["batch_size"]))]
    return rows, bool(spacing_ok and scheme_ok)


def main() -> int:
    """Build the datasets, plan them both ways and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="folder for the datasets and plans (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="check_plan_nnunet_"))
    env = {**os.environ, "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed"),
           "nnUNet_results": str(work / "results"), "nnUNet_def_n_proc": "1"}
    rows, agree = [], True
    for name, (dataset_id, modality, shape, margin) in DATASETS.items():
        folder = write_dataset(work / "raw", name, dataset_id, modality, shape, margin)
        mine = gpuprep_plan(folder, work / "gpuprep" / str(dataset_id))
        theirs = nnunet_plan(dataset_id, env)
        found, same = table_rows(name, mine, theirs)
        rows += found
        agree &= same
    widths = [max(len(r[i]) for r in [("dataset", "", "gpuprep", "nnU-Net"), *rows]) for i in range(4)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(("dataset", "", "gpuprep", "nnU-Net v2"), widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    print(f"\nspacing and normalisation {'agree' if agree else 'DISAGREE'} (work folder: {work})")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
