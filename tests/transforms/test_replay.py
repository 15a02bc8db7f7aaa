"""gp.replay repeats a run exactly: fused runs, unfused runs, batches, and from the loaded input."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import TransformError


def _oblique_las_nifti(path, seed=0):
    """A float32 NIfTI on an oblique, LAS-like grid, written by nibabel (values 0 to ~1857)."""
    rng = np.random.default_rng(seed)
    volume = (rng.random((14, 12, 10)) * 1857).astype(np.float32)
    affine = np.array([[-1.5, 0.1, 0.0, 10.0], [0.0, 1.2, 0.2, -5.0], [0.1, 0.0, 2.0, 3.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, affine), path)
    return str(path)


def _pipeline(fuse=True):
    return gp.Compose([
        gp.LoadImage("image", dtype="float32"),
        gp.Orientation("image", "RAS"),
        gp.Resample("image", 1.3),
        gp.RandAffine("image", rotate=10, scale=0.1),
    ], seed=11, fuse=fuse)


def _check_same(replayed, out):
    assert torch.equal(replayed["image"], out["image"])
    assert torch.equal(gp.get_affine(replayed, "image"), gp.get_affine(out, "image"))
    assert gp.get_history(replayed) == gp.get_history(out)


def test_replay_of_fused_orientation_resample_randaffine_is_exact(tmp_path):
    path = _oblique_las_nifti(tmp_path / "oblique.nii.gz")
    out = _pipeline()({"image": path})
    history = gp.get_history(out)
    assert [r.get("fused") for r in history[1:]] == [{"index": i, "count": 3} for i in range(3)]
    # From the file (LoadImage replayed with its recorded dtype) and from the loaded input.
    _check_same(gp.replay({"image": path}, history), out)
    loaded = gp.LoadImage("image", dtype="float32")({"image": path})
    _check_same(gp.replay(loaded, history), out)
    # The fused result is not the step-by-step one: replay has to resample the run together.
    stepwise = gp.Compose(_pipeline().transforms[1:], seed=11, fuse=False)(loaded)
    assert not torch.equal(stepwise["image"], out["image"])


def test_replay_of_unfused_run_is_exact(tmp_path):
    path = _oblique_las_nifti(tmp_path / "oblique.nii.gz")
    out = _pipeline(fuse=False)({"image": path})
    assert not any("fused" in r for r in gp.get_history(out))
    _check_same(gp.replay({"image": path}, gp.get_history(out)), out)


def test_replay_of_fused_batch_is_exact(tmp_path):
    paths = [_oblique_las_nifti(tmp_path / f"oblique{i}.nii.gz", seed=i) for i in range(2)]
    out = _pipeline()({"image": paths})
    assert out["image"].ndim == 5
    history = gp.get_history(out)
    assert len(history) == 2 and history[0][-1]["params"]["draw"] != history[1][-1]["params"]["draw"]
    _check_same(gp.replay({"image": paths}, history), out)


def test_replay_of_fused_run_with_label_and_elastic_is_exact():
    generator = torch.Generator().manual_seed(0)
    sample = gp.make_sample({"image": torch.rand(1, 12, 11, 10, generator=generator),
                             "label": torch.randint(0, 4, (1, 12, 11, 10), generator=generator, dtype=torch.uint8)})
    keys = ["image", "label"]
    pipeline = gp.Compose([gp.RandFlip(keys, p=0.5), gp.RandElastic(keys, max_displacement=2.0),
                           gp.Resample(keys, 1.4)], seed=5)
    out = pipeline(sample)
    assert "fused" in gp.get_history(out)[0]
    replayed = gp.replay(sample, gp.get_history(out))
    assert torch.equal(replayed["image"], out["image"]) and torch.equal(replayed["label"], out["label"])


def test_replay_refuses_a_fused_run_cut_in_the_middle():
    sample = gp.make_sample({"image": torch.rand(1, 6, 6, 6)})
    out = gp.Compose([gp.Flip("image", 0), gp.Resample("image", 2.0)])(sample)
    with pytest.raises(TransformError, match=r"record 0 \(Resample\) is marked fused"):
        gp.replay(sample, gp.get_history(out)[1:])


def test_replay_on_a_sample_loaded_with_another_dtype_says_so(tmp_path):
    path = _oblique_las_nifti(tmp_path / "oblique.nii.gz")
    out = _pipeline()({"image": path})
    loaded_as_float64 = gp.LoadImage("image", dtype="float64")({"image": path})
    with pytest.raises(TransformError, match=r"record 0 \(LoadImage\).*'dtype': 'float64'.*'dtype': 'float32'"):
        gp.replay(loaded_as_float64, gp.get_history(out))


def test_replay_of_a_chain_split_by_padding_values_is_exact(tmp_path):
    """A CT chain whose steps pad with -1000 and 0 is resampled in two fused runs; replay follows them."""
    path = _oblique_las_nifti(tmp_path / "oblique.nii.gz")
    pipeline = gp.Compose([
        gp.LoadImage("image"),
        gp.Orientation("image", "RAS"),
        gp.CropOrPad("image", (16, 16, 16), padding_value=-1000),
        gp.Resample("image", 1.3, padding_value=-1000),
        gp.RandAffine("image", rotate=10, translate=4, padding_value=0),
        gp.Flip("image", 0),
    ], seed=5)
    out = pipeline({"image": path})
    fused = [r.get("fused") for r in gp.get_history(out)[1:]]
    assert fused[:3] == [{"index": i, "count": 3} for i in range(3)]  # Orientation, CropOrPad, Resample
    assert fused[3:] == [{"index": i, "count": 2} for i in range(2)]  # RandAffine, Flip
    assert float(out["image"].min()) == pytest.approx(-1000.0, abs=1e-3)
    _check_same(gp.replay({"image": path}, gp.get_history(out)), out)
