"""The measuring script of the model cards: it runs end to end and scores what it claims to score."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gpuprep.models.evaluate import dice, main, mni_tissue
from gpuprep.models.train import train
from gpuprep.models.unet import save_checkpoint

pytest.importorskip("nilearn")


def test_dice_matches_its_definition():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, (2, 12, 10, 8))
    expected = 2 * np.sum((a == 2) & (b == 2)) / (np.sum(a == 2) + np.sum(b == 2))
    assert dice(torch.from_numpy(a), torch.from_numpy(b), 2) == pytest.approx(expected)
    assert dice(torch.zeros(3, 3, 3), torch.zeros(3, 3, 3), 1) == 0.0  # absent in both: no division by zero


def test_mni_truth_is_the_tissue_argmax_inside_the_brain_mask():
    image, truth, affine = mni_tissue(2)
    assert image.shape == truth.shape and image.dtype == torch.float32 and truth.dtype == torch.uint8
    assert set(torch.unique(truth).tolist()) == {0, 1, 2, 3}
    white, grey = image[truth == 3].median(), image[truth == 2].median()
    assert white > grey  # the T1 contrast: the labels sit where the template's tissues are
    assert np.allclose(np.abs(np.diag(affine)[:3]), 2.0)


@pytest.mark.parametrize("task", ["brain-mask", "brain-tissue"])
def test_command_line_prints_the_metrics_of_a_checkpoint(task, tmp_path, capsys):
    model, spec = train(task, steps=1, batch_size=1, num_patches=1, patch=32, channels=(4, 8), progress=False,
                        spacing=3.0, num_heads=1)
    save_checkpoint(tmp_path / "tiny.pt", model, spec)
    options = ["--seeds", "10001"] if task == "brain-mask" else ["--no-flip-average", "--no-refine"]
    assert main(["--task", task, "--weights", str(tmp_path / "tiny.pt"), *options]) == 0
    metrics = json.loads(capsys.readouterr().out)
    if task == "brain-mask":
        assert len(metrics["synthetic_each"]) == len(metrics["synthetic_any_contrast_each"]) == 1
        names = ["synthetic_heads", "synthetic_heads_any_contrast", "mni_t1_in_synthetic_head"]
        scores = [metrics[name] for name in names]
    else:
        assert len(metrics["perturbed_each"]) == 3 and metrics["flip_average"] is metrics["refine"] is False
        scores = [*metrics["clean"].values(), *metrics["perturbed"].values()]
    assert all(0.0 <= score <= 1.0 for score in scores)


def test_tissue_in_heads_and_masked_run_the_pipelines_of_gpuprep_segment():
    from gpuprep.models.evaluate import evaluate_tissue, evaluate_tissue_in_heads

    tissue, spec = train("brain-tissue", steps=1, batch_size=1, num_patches=1, patch=32, channels=(4, 8),
                         progress=False, spacing=3.0, num_heads=1)
    tissue.spec = spec
    mask, mask_spec = train("brain-mask", steps=1, batch_size=1, num_patches=1, patch=32, channels=(4, 8),
                            progress=False, spacing=3.0, num_heads=1)
    mask.spec = mask_spec
    heads = evaluate_tissue_in_heads(tissue, mask, seeds=(10001,), resolution=2, flip_average=False)
    assert len(heads["heads_each"]) == 1 and set(heads["heads"]) == {"CSF", "GM", "WM", "brain_mask"}
    assert all(0.0 <= score <= 1.0 for score in heads["heads"].values())
    masked = evaluate_tissue(tissue, resolution=2, perturb_seeds=(0,), flip_average=False, masked=True)
    assert masked["masked"] is True and len(masked["perturbed_each"]) == 1
    assert all(0.0 <= score <= 1.0 for score in [*masked["clean"].values(), *masked["perturbed"].values()])
