"""The synthetic training script: deterministic with a seed, and its checkpoint loads and segments."""

from __future__ import annotations

import numpy as np
import torch

import gpuprep as gp
from gpuprep.models.train import label_maps, main, train


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_training_is_deterministic_and_moves_the_weights():
    options = {"steps": 2, "batch_size": 1, "num_patches": 1, "patch": 32, "channels": (4, 8), "progress": False,
               "spacing": 3.0}
    first, spec = train("brain-tissue", seed=3, **options)
    second, _ = train("brain-tissue", seed=3, **options)
    other, _ = train("brain-tissue", seed=4, **options)
    assert torch.equal(_weights(first), _weights(second))
    assert not torch.equal(_weights(first), _weights(other))
    assert spec["labels"] == {"0": "background", "1": "CSF", "2": "GM", "3": "WM"}
    assert spec["training"]["steps"] == 2 and spec["architecture"]["channels"] == [4, 8]


def test_command_line_writes_a_checkpoint_that_segments(tmp_path, capsys):
    output = tmp_path / "mask.pt"
    assert main(["--task", "brain-mask", "--steps", "1", "--batch-size", "1", "--num-patches", "1", "--patch", "32",
                 "--channels", "4", "8", "--heads", "2", "--output", str(output), "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    model = gp.models.load_pretrained(output, device="cpu")
    assert model.spec["task"] == "brain-mask" and model.spec["labels"] == {"0": "background", "1": "brain"}
    sample = gp.data.sample_brain()
    out = gp.SkullStrip("image", model=model, apply=False)(sample)
    assert out["brain_mask"].shape == sample["image"].shape and out["brain_mask"].dtype == torch.uint8


def test_checkpoints_during_training_hold_the_weights_of_that_step(tmp_path):
    options = {"steps": 3, "batch_size": 1, "num_patches": 1, "patch": 32, "channels": (4, 8), "progress": False,
               "spacing": 3.0, "seed": 5}
    finished, _ = train("brain-tissue", checkpoint=tmp_path / "run.pt", checkpoint_every=2, **options)
    snapshot, spec = gp.models.load_checkpoint(tmp_path / "run.pt")
    assert spec["training"]["steps_done"] == 2 and spec["training"]["steps"] == 3
    # Written after step 2 and not again at the end (the caller saves the finished model) ...
    assert not torch.equal(_weights(snapshot), _weights(finished).half().float())
    # ... and the same snapshot when the run is repeated.
    train("brain-tissue", checkpoint=tmp_path / "again.pt", checkpoint_every=2, **options)
    repeated, _ = gp.models.load_checkpoint(tmp_path / "again.pt")
    assert torch.equal(_weights(snapshot), _weights(repeated))


def test_tissue_label_maps_are_the_templates_partial_volumes():
    """The tissue generator paints the MNI fractions (linear at 1.5 mm); the target is the label map."""
    maps, affines, targets = label_maps("brain-tissue", seed=0, spacing=1.5)
    fractions, target = maps[0], targets[0]
    assert fractions.dtype == torch.float32 and fractions.shape[0] == 4 and target.shape == (1, *fractions.shape[1:])
    torch.testing.assert_close(fractions.sum(0), torch.ones(fractions.shape[1:]), rtol=0, atol=1e-5)
    assert np.allclose(np.diag(affines[0])[:3], 1.5)
    # Mixed voxels (the partial volumes) exist, and the hard target mostly agrees with the argmax.
    assert ((fractions > 0.2) & (fractions < 0.8)).any(0).float().mean() > 0.05
    assert (fractions.argmax(0, keepdim=True).to(torch.uint8) == target).float().mean() > 0.98
    assert set(torch.unique(target).tolist()) == {0, 1, 2, 3}
