"""Derive gpuprep's bundled 2 mm sample brain from the MNI152 templates installed with nilearn.

Nothing is downloaded: nilearn ships the 1 mm ICBM 2009a nonlinear symmetric T1, grey-matter and
white-matter templates and resamples them to 2 mm on request. From those this script writes

- ``sample_t1w.nii.gz``: the T1 template as uint8, ``round(255 * value)`` clipped to [0, 255]
  (nilearn rescales the uint8 1 mm file to [0, 1]; this puts it back on that scale);
- ``sample_tissue.nii.gz``: uint8 labels, 0 background, 1 CSF, 2 grey matter, 3 white matter:
  inside the brain mask the argmax of ``(clip(1 - gm - wm, 0, 1), gm, wm)`` (ties go to the
  first), 0 outside;
- ``sample_brainmask.nii.gz``: nilearn's 2 mm brain mask as uint8 0/1;
- ``sample_tissue_1mm.nii.gz``: the same tissue labels from the 1 mm templates (the anatomy the
  shipped brain-tissue U-Net is trained on, see ``gpuprep/models/train.py``).

All three keep the template's affine, written as both qform and sform with code 4 (MNI152), and
are gzipped at level 9 with a zero timestamp, so the output depends only on nilearn's files.

Usage
-----
``python scripts/make_sample_data.py [--output-dir DIR]`` (default: ``gpuprep/data/sample``).

Example
-------
>>> main(["--output-dir", "/tmp/sample"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent.parent / "gpuprep" / "data" / "sample"
FILENAMES = {
    "image": "sample_t1w.nii.gz",
    "label": "sample_tissue.nii.gz",
    "brain_mask": "sample_brainmask.nii.gz",
}
TISSUE_1MM_FILENAME = "sample_tissue_1mm.nii.gz"
RESOLUTION_MM = 2
XFORM_CODE_MNI152 = 4


def load_templates(resolution: int = RESOLUTION_MM) -> dict[str, nib.Nifti1Image]:
    """Load nilearn's MNI152 images: ``"t1"``, ``"gm"``, ``"wm"`` and ``"brain_mask"`` (2 mm by default)."""
    from nilearn import datasets

    return {
        "t1": datasets.load_mni152_template(resolution=resolution),
        "gm": datasets.load_mni152_gm_template(resolution=resolution),
        "wm": datasets.load_mni152_wm_template(resolution=resolution),
        "brain_mask": datasets.load_mni152_brain_mask(resolution=resolution),
    }


def derive_arrays(templates: dict[str, nib.Nifti1Image]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Compute the three uint8 arrays and the affine from nilearn's 2 mm MNI152 templates.

    Parameters
    ----------
    templates:
        The images returned by :func:`load_templates`.

    Returns
    -------
    arrays:
        ``{"image", "label", "brain_mask"}`` -> uint8 arrays of shape (99, 117, 95).
    affine:
        The templates' float64 4x4 voxel-to-world matrix.
    """
    t1_img, gm_img, wm_img, mask_img = (templates[k] for k in ("t1", "gm", "wm", "brain_mask"))
    affine = np.asarray(t1_img.affine, dtype=np.float64)
    for name, img in (("gm", gm_img), ("wm", wm_img), ("brain mask", mask_img)):
        if img.shape != t1_img.shape or not np.allclose(img.affine, affine):
            raise RuntimeError(f"nilearn's {name} template is not on the T1 template's grid")

    t1 = np.asarray(t1_img.get_fdata(), dtype=np.float64)
    gm = np.clip(np.asarray(gm_img.get_fdata(), dtype=np.float64), 0.0, 1.0)
    wm = np.clip(np.asarray(wm_img.get_fdata(), dtype=np.float64), 0.0, 1.0)
    mask = np.asarray(mask_img.get_fdata()) > 0

    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    tissue = np.argmax(np.stack([csf, gm, wm]), axis=0) + 1
    labels = np.where(mask, tissue, 0).astype(np.uint8)
    image = np.clip(np.round(255.0 * t1), 0, 255).astype(np.uint8)
    arrays = {"image": image, "label": labels, "brain_mask": mask.astype(np.uint8)}
    return arrays, affine


def save_uint8(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a uint8 NIfTI-1 file with qform = sform = ``affine`` (code MNI152), gzip level 9."""
    img = nib.Nifti1Image(array.astype(np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    img.set_qform(affine, code=XFORM_CODE_MNI152)
    img.set_sform(affine, code=XFORM_CODE_MNI152)
    img.header.set_xyzt_units(xyz="mm")
    img.header["descrip"] = b"gpuprep sample from MNI ICBM152 2009a sym"
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=9, mtime=0))


def main(argv: Sequence[str] | None = None, *, templates: dict | None = None,
         templates_1mm: dict | None = None) -> dict[str, Path]:
    """Write the sample files into ``--output-dir`` and return their paths by key (``"tissue_1mm"`` too).

    ``templates`` and ``templates_1mm`` (from :func:`load_templates`) save loading them again when
    already at hand.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR,
        help=f"folder to write the files into (default: {DEFAULT_OUTPUT_DIR})",
    )
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    arrays, affine = derive_arrays(load_templates() if templates is None else templates)
    paths = {}
    for key, name in FILENAMES.items():
        paths[key] = args.output_dir / name
        save_uint8(arrays[key], affine, paths[key])
        print(f"wrote {paths[key]} {arrays[key].shape} uint8")
    fine, fine_affine = derive_arrays(load_templates(1) if templates_1mm is None else templates_1mm)
    paths["tissue_1mm"] = args.output_dir / TISSUE_1MM_FILENAME
    save_uint8(fine["label"], fine_affine, paths["tissue_1mm"])
    print(f"wrote {paths['tissue_1mm']} {fine['label'].shape} uint8")
    return paths


if __name__ == "__main__":
    main()
