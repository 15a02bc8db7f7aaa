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


def _write_labels(folder, name, labels, affine):
    import nibabel as nib

    folder.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), folder / f"{name}_labels.nii.gz")


def test_real_head_label_maps_are_read_at_the_training_spacing(tmp_path):
    from gpuprep.models.train import real_head_label_maps

    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[4:16, 4:16, 4:16] = 7
    labels[8:12, 8:12, 8:12] = 2
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    _write_labels(tmp_path / "heads", "a", labels, affine)
    maps, affines, targets = real_head_label_maps(tmp_path / "heads", spacing=2.0)
    assert maps[0].shape == (1, 10, 10, 10) and np.allclose(np.diag(affines[0])[:3], 2.0)
    assert set(maps[0].unique().tolist()) == {0, 2, 7}
    assert torch.equal(targets[0], (maps[0] == 2).to(torch.uint8))


def test_an_empty_real_heads_folder_is_an_error(tmp_path):
    import pytest

    from gpuprep.errors import ConfigError
    from gpuprep.models.train import real_head_label_maps

    with pytest.raises(ConfigError, match=r"no \*_labels\.nii\.gz"):
        real_head_label_maps(tmp_path, spacing=2.0)


def test_random_field_of_view_cuts_one_box_and_replicates_its_edges():
    from gpuprep.models.train import random_field_of_view

    volume = torch.arange(12 * 10 * 8, dtype=torch.float32).reshape(1, 12, 10, 8)
    labels = (volume.long() % 5).to(torch.uint8)
    cut_volume, cut_labels = random_field_of_view([volume, labels], torch.Generator().manual_seed(4), 0.5)
    again = random_field_of_view([volume, labels], torch.Generator().manual_seed(4), 0.5)
    assert torch.equal(cut_volume, again[0]) and torch.equal(cut_labels, again[1])
    assert cut_volume.shape == volume.shape and cut_labels.dtype == torch.uint8
    # Every output voxel holds the input value of its nearest voxel inside one box (NumPy reference).
    # The box is where the output's values change along each axis (the input's values all differ).
    out = cut_volume[0].numpy()
    box = []
    for axis in range(3):
        values = np.moveaxis(out, axis, 0).reshape(out.shape[axis], -1)[:, 0]
        distinct = np.flatnonzero(np.diff(values) != 0)
        box.append((distinct[0], distinct[-1] + 2) if len(distinct) else (0, 1))
    inner = volume[0].numpy()
    index = np.ix_(*[np.clip(np.arange(n), lo, hi - 1) for n, (lo, hi) in zip(out.shape, box)])
    np.testing.assert_array_equal(out, inner[index])
    np.testing.assert_array_equal(cut_labels[0].numpy(), labels[0].numpy()[index])
    assert all(hi - lo >= 0.5 * n for (lo, hi), n in zip(box, out.shape))


def test_padding_to_a_common_shape_keeps_world_positions():
    from gpuprep.models.train import pad_to_common_shape

    small, large = torch.ones(1, 4, 6, 8, dtype=torch.uint8), torch.zeros(1, 8, 6, 10, dtype=torch.uint8)
    affine = np.array([[2.0, 0, 0, 10], [0, 2, 0, -4], [0, 0, 2, 3], [0, 0, 0, 1]])
    maps, affines, targets = pad_to_common_shape([small, large], [affine, affine], [small, large])
    assert [tuple(m.shape) for m in maps] == [(1, 8, 6, 10)] * 2 and torch.equal(maps[0], targets[0])
    # The first voxel of the small map is now at index (2, 0, 1) and keeps its world position.
    assert maps[0][0, 2, 0, 1] == 1 and maps[0][0, 1, 0, 1] == 0
    np.testing.assert_allclose(affines[0] @ [2, 0, 1, 1], affine @ [0, 0, 0, 1])


def test_training_with_real_heads_records_them(tmp_path):
    from gpuprep.data.sample_data import sample_brain
    from gpuprep.models.head_labels import whole_head_labels
    from gpuprep.models.synth import synthetic_head

    brain = sample_brain()
    head, head_affine = synthetic_head(brain["label"], brain["label_meta"]["affine"].numpy(), seed=1)
    image = torch.tensor([0.0, 0.3, 0.6, 0.9, 0.1, 0.05, 0.7])[head.long()]
    labels = whole_head_labels(image, (head >= 1) & (head <= 3), spacing=(2, 2, 2), intensity_classes=3)
    _write_labels(tmp_path / "heads", "synthetic", labels[0].numpy(), head_affine)
    options = {"steps": 2, "batch_size": 2, "num_patches": 1, "patch": 32, "channels": (4, 8), "progress": False,
               "num_heads": 1, "seed": 2}
    model, spec = train("brain-mask", real_heads=tmp_path / "heads", **options)
    again, _ = train("brain-mask", real_heads=tmp_path / "heads", **options)
    assert torch.equal(_weights(model), _weights(again))
    assert spec["training"]["real_heads"] == ["synthetic_labels.nii.gz"]
    assert spec["training"]["field_of_view"]["p"] > 0
