"""Tests of the bundled sample brain: its files, their derivation from nilearn, and sample_brain()."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from gpuprep.data.labels import CSF, GM, TISSUE_LABELS, WM
from gpuprep.data.sample_data import SAMPLE_DIR, sample_brain, sample_brain_paths, tissue_1mm_path
from gpuprep.sample import get_affine, get_history

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "make_sample_data.py"
KEYS = ("image", "label", "brain_mask")


@pytest.fixture(scope="module")
def brain() -> dict:
    return sample_brain()


@pytest.fixture(scope="module")
def on_disk() -> dict[str, nib.Nifti1Image]:
    return {key: nib.load(path) for key, path in sample_brain_paths().items()}


@pytest.fixture(scope="module")
def script():
    """scripts/make_sample_data.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_sample_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def templates(script) -> dict[str, nib.Nifti1Image]:
    """nilearn's 2 mm MNI152 T1, GM, WM and brain mask (loaded once: resampling takes a while)."""
    try:
        import nilearn  # noqa: F401
    except ImportError:
        pytest.skip("nilearn is not installed (it is a dev dependency: pip install -e '.[dev]')")
    return script.load_templates()


def test_paths_exist_and_are_named_by_key():
    paths = sample_brain_paths()
    assert set(paths) == set(KEYS)
    for path in paths.values():
        assert isinstance(path, Path) and path.is_absolute() and path.is_file()
        assert path.name.endswith(".nii.gz") and path.parent == SAMPLE_DIR


def test_committed_files_are_small_and_licensed():
    files = [p for p in SAMPLE_DIR.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_000_000
    notice = (SAMPLE_DIR / "LICENSE-MNI152.txt").read_text()
    assert "Copyright (C) 1993-2009 Louis Collins" in notice and "Fonov" in notice
    assert (SAMPLE_DIR / "README.md").is_file()


def test_files_on_disk_are_uint8_with_mni_qform_and_sform(on_disk):
    reference_affine = on_disk["image"].affine
    for img in on_disk.values():
        assert img.shape == (99, 117, 95)
        assert img.get_data_dtype() == np.uint8
        qform, qcode = img.header.get_qform(coded=True)
        sform, scode = img.header.get_sform(coded=True)
        assert int(qcode) == int(scode) == 4  # NIFTI_XFORM_MNI_152
        np.testing.assert_allclose(qform, sform, atol=1e-6)
        np.testing.assert_array_equal(img.affine, reference_affine)
    assert nib.aff2axcodes(reference_affine) == ("R", "A", "S")


def test_files_regenerate_identically_from_nilearn(script, templates, tmp_path, on_disk):
    written = script.main(["--output-dir", str(tmp_path)], templates=templates)
    assert set(written) == {*KEYS, "tissue_1mm"}
    assert written["tissue_1mm"].read_bytes() == tissue_1mm_path().read_bytes()
    for key, img in on_disk.items():
        regenerated = nib.load(written[key])
        assert regenerated.get_data_dtype() == img.get_data_dtype()
        np.testing.assert_array_equal(np.asarray(regenerated.dataobj), np.asarray(img.dataobj))
        np.testing.assert_array_equal(regenerated.affine, img.affine)
        np.testing.assert_array_equal(regenerated.header.get_qform(), img.header.get_qform())
        np.testing.assert_array_equal(regenerated.header.get_sform(), img.header.get_sform())


def test_files_match_the_nilearn_templates(templates, on_disk):
    t1, mask = templates["t1"], templates["brain_mask"]
    gm, wm = templates["gm"].get_fdata(), templates["wm"].get_fdata()
    np.testing.assert_allclose(on_disk["image"].affine, t1.affine)
    np.testing.assert_allclose(on_disk["image"].get_fdata() / 255, t1.get_fdata(), atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(on_disk["brain_mask"].get_fdata(), mask.get_fdata())

    label = np.asarray(on_disk["label"].dataobj)
    csf = np.clip(1 - gm - wm, 0, 1)
    # Each label is its most probable class; ties go to the first of (CSF, GM, WM).
    assert np.all(wm[label == WM] > gm[label == WM])
    assert np.all(wm[label == WM] > csf[label == WM])
    assert np.all(gm[label == GM] >= wm[label == GM])
    assert np.all(gm[label == GM] > csf[label == GM])
    assert np.all(csf[label == CSF] >= np.maximum(gm, wm)[label == CSF])
    np.testing.assert_array_equal(label > 0, np.asarray(mask.dataobj) > 0)
    # Most of what nilearn calls likely white (grey) matter inside the mask is labelled so.
    inside = np.asarray(mask.dataobj) > 0
    assert np.mean(label[inside & (wm > 0.5)] == WM) > 0.99
    assert np.mean(label[inside & (gm > 0.5)] == GM) > 0.99


def test_sample_brain_layout(brain):
    assert set(brain) == {*KEYS, *(f"{k}_meta" for k in KEYS), "history"}
    assert get_history(brain) == []
    expected_dtypes = {"image": torch.float32, "label": torch.uint8, "brain_mask": torch.uint8}
    for key, path in sample_brain_paths().items():
        assert brain[key].shape == (1, 99, 117, 95)
        assert brain[key].dtype == expected_dtypes[key]
        meta = brain[f"{key}_meta"]
        assert meta["filename"] == str(path)
        assert meta["original_shape"].tolist() == [99, 117, 95]
        assert meta["affine"].dtype == torch.float64


def test_sample_brain_matches_nibabel(brain, on_disk):
    for key, img in on_disk.items():
        np.testing.assert_array_equal(get_affine(brain, key).numpy(), img.affine)
        np.testing.assert_array_equal(brain[f"{key}_meta"]["original_affine"].numpy(), img.affine)
        np.testing.assert_array_equal(brain[key][0].numpy(), img.get_fdata())


def test_sample_brain_labels_and_mask(brain):
    label, mask = brain["label"], brain["brain_mask"]
    assert set(torch.unique(label).tolist()) == set(TISSUE_LABELS)
    assert set(torch.unique(mask).tolist()) == {0, 1}
    assert torch.equal(mask, (label > 0).to(torch.uint8))


def test_sample_brain_t1_contrast(brain):
    image, label = brain["image"], brain["label"]
    means = {k: image[label == k].mean().item() for k in (CSF, GM, WM)}
    assert means[WM] > means[GM] > means[CSF]
    assert 0 <= image.min() and image.max() <= 255


def test_sample_brain_device(device):
    s = sample_brain(device=device)
    for key in KEYS:
        assert s[key].device.type == device.type
        assert s[f"{key}_meta"]["affine"].device.type == "cpu"
