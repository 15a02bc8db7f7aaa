"""gp.rebuild: a pipeline rebuilt from a sidecar draws what the recorded run drew, wherever its steps stood."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError
from tests.conftest import oblique_affine


def _source(tmp_path, name="in.nii.gz", seed=0):
    volume = np.random.default_rng(seed).random((12, 10, 9)).astype(np.float32) * 100
    path = tmp_path / name
    nib.save(nib.Nifti1Image(volume, oblique_affine(spacing=(1.2, 1.0, 1.5))), path)
    return str(path)


def _drawn(history):
    return [(r["name"], r["params"]) for r in history if "stream" in r]


def _rerun_equals(sidecar, out, tmp_path):
    run = gp.rebuild(sidecar, output_dir=tmp_path / "again")
    rerun = run.run()
    assert _drawn(gp.get_history(rerun)) == _drawn(gp.get_history(out)) != []
    assert torch.equal(rerun["image"], out["image"])
    return run


def test_rebuild_draws_same_params_for_random_step_at_another_position(tmp_path):
    # Loaded and saved outside the Compose: RandAffine is at position 1 of its Compose, but at
    # position 2 of the rebuilt pipeline (after LoadImage), so a seed derived from the position differs.
    loaded = gp.LoadImage("image")({"image": _source(tmp_path)})
    out = gp.Compose([gp.Orientation("image", "RAS"), gp.RandAffine("image", rotate=20, scale=0.2)], seed=4)(loaded)
    gp.SaveImage("image", tmp_path / "out")(out)
    run = _rerun_equals(tmp_path / "out" / "in.json", out, tmp_path)
    names = [type(t).__name__ for t in run.pipeline.transforms]
    assert names == ["LoadImage", "Orientation", "RandAffine", "SaveImage"]
    assert run.pipeline.transforms[2].seed == gp.random.sample_seed(4, 1) != gp.random.sample_seed(4, 2)


def test_rebuild_of_a_chosen_step_draws_same_params(tmp_path):
    # OneOf records the step it chose, which then stands alone in the rebuilt pipeline.
    pipeline = gp.Compose([gp.LoadImage("image"), gp.OneOf([gp.RandAffine("image", rotate=20),
                                                             gp.RandGamma("image", p=1.0)]),
                           gp.SaveImage("image", tmp_path / "out")], seed=9)
    out = pipeline({"image": _source(tmp_path)})
    _rerun_equals(tmp_path / "out" / "in.json", out, tmp_path)


def test_rebuild_of_an_unseeded_run_draws_same_params(tmp_path):
    pipeline = gp.Compose([gp.LoadImage("image"), gp.RandAffine("image", rotate=20), gp.RandFlip("image"),
                           gp.SaveImage("image", tmp_path / "out")])
    out = pipeline({"image": _source(tmp_path)})
    assert gp.read_sidecar(tmp_path / "out" / "in.json")["pipeline"]["transforms"][1]["config"]["seed"] is not None
    _rerun_equals(tmp_path / "out" / "in.json", out, tmp_path)


def test_rebuild_of_a_batch_member_draws_its_params(tmp_path):
    paths = [_source(tmp_path, f"in{i}.nii.gz", seed=i) for i in range(2)]
    pipeline = gp.Compose([gp.LoadImage("image"), gp.RandAffine("image", rotate=20),
                           gp.SaveImage("image", tmp_path / "out")], seed=2)
    out = pipeline({"image": paths, "sample_index": torch.tensor([7, 8])})
    run = gp.rebuild(tmp_path / "out" / "in1.json", output_dir=tmp_path / "again")
    assert run.sample() == {"image": paths[1], "sample_index": 8}
    rerun = run.run()
    assert _drawn(gp.get_history(rerun)) == _drawn(gp.get_history(out)[1])
    assert torch.equal(rerun["image"], out["image"][1])  # on the CPU, a batch member's voxels too


def test_rebuild_refuses_a_run_that_fused_some_spatial_steps_and_not_others(tmp_path):
    source = _source(tmp_path)
    fused = gp.Compose([gp.LoadImage("image"), gp.Flip("image", 0), gp.Resample("image", 1.5)])({"image": source})
    out = gp.Orientation("image", "LPS")(fused)  # a fusable step run on its own
    gp.SaveImage("image", tmp_path / "out")(out)
    sidecar = tmp_path / "out" / "in.json"
    with pytest.raises(ConfigError, match=r"in\.json: the run resampled its spatial steps in groups of \[1, 2, 1\]"):
        gp.rebuild(sidecar)
    # Its history still replays exactly.
    assert torch.equal(gp.replay({"image": source}, gp.read_sidecar(sidecar)["history"])["image"], out["image"])


def test_compose_config_holds_the_epoch():
    pipeline = gp.Compose([gp.RandFlip("image")], seed=1)
    pipeline.set_epoch(6)
    rebuilt = gp.Compose.from_yaml(pipeline.to_yaml())
    assert rebuilt.get_config()["epoch"] == 6 and rebuilt.transforms[0].epoch == 6
    with pytest.raises(ConfigError, match="'epoch' must be a non-negative integer, got -1"):
        gp.Compose.from_config({**pipeline.get_config(), "epoch": -1})


def test_an_unknown_transform_name_suggests_the_closest_ones_in_a_short_message():
    with pytest.raises(ConfigError, match="did you mean ZNormalize") as caught:
        gp.Compose.from_config({"transforms": [{"name": "ZNormalise", "config": {"keys": ["image"]}}]})
    assert len(str(caught.value)) < 300
