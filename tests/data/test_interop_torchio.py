"""Round trips through TorchIO (Subject, ToCanonical, Resample) mixed with gpuprep steps.

Every chain must leave the voxels at the world positions nibabel gives them in the input file
(see :mod:`tests.data.world_positions`), on LAS, LPS and oblique files, synthetic and real.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio

import gpuprep as gp
from gpuprep.errors import TransformError
from tests.data.world_positions import (
    assert_same_voxels_and_grids,
    assert_same_world_values_exact,
    assert_same_world_values_interpolated,
    las_affine,
)


def _subject(path: Path):
    """A TorchIO subject with the file as an image and a label map made from it (values 0..3)."""
    image = nib.load(path)
    labels = np.digitize(np.asanyarray(image.dataobj), np.quantile(np.asanyarray(image.dataobj), [0.25, 0.5, 0.75]))
    return tio.Subject(image=tio.ScalarImage(path), seg=tio.LabelMap(tensor=torch.from_numpy(labels)[None].to(
        torch.uint8), affine=image.affine))


def test_torchio_subject_through_gpuprep_and_tocanonical_keeps_world_positions(source):
    sample = gp.from_torchio(_subject(source))
    shape = [n + 2 if i == 0 else n - 1 for i, n in enumerate(sample["image"].shape[1:])]
    steps = gp.Compose([gp.Flip(["image", "seg"], 1), gp.CropOrPad(["image", "seg"], shape)])
    back = gp.from_torchio(tio.ToCanonical()(gp.to_torchio(steps(sample))))
    assert_same_world_values_exact(back["image"], gp.get_affine(back, "image"), source)
    torch.testing.assert_close(gp.get_affine(back, "seg"), gp.get_affine(back, "image"))
    assert gp.get_meta(back, "image")["filename"] == str(source)


def test_torchio_resample_after_gpuprep_keeps_world_positions(source):
    sample = gp.Orientation(["image", "seg"], "RAS")(gp.from_torchio(_subject(source)))
    sample["image"] = sample["image"].float()  # TorchIO casts back to an int16 input's dtype, truncating
    resampled = tio.Resample((1.3, 1.7, 2.1), image_interpolation="linear")(gp.to_torchio(sample))
    back = gp.from_torchio(resampled)
    assert_same_world_values_interpolated(back["image"], gp.get_affine(back, "image"), source, atol=1e-3)
    assert back["seg"].dtype == torch.uint8 and set(back["seg"].unique().tolist()) <= {0, 1, 2, 3}


def test_gpuprep_resample_of_a_torchio_subject_keeps_world_positions(source):
    sample = gp.from_torchio(tio.ToCanonical()(_subject(source)))
    out = gp.Resample("image", (1.3, 1.7, 2.1), anti_aliasing=False)(sample)
    assert_same_world_values_interpolated(out["image"], gp.get_affine(out, "image"), source)


def test_kind_and_history_survive_the_torchio_round_trip():
    ct = torch.randint(-1000, 1000, (1, 5, 6, 7), dtype=torch.int16)
    seg = torch.randint(0, 3, (1, 5, 6, 7)).float()  # a float label map: the kind, not the dtype, decides
    sample = gp.make_sample({"ct": ct, "seg": seg}, affine=torch.from_numpy(las_affine()), labels=["seg"])
    sample = gp.Orientation(["ct", "seg"], "RAS")(sample)
    subject = gp.to_torchio(sample)
    assert isinstance(subject["ct"], tio.ScalarImage) and isinstance(subject["seg"], tio.LabelMap)
    back = gp.from_torchio(tio.ToCanonical()(subject))
    assert (gp.get_kind(back, "ct"), gp.get_kind(back, "seg")) == ("image", "label")
    assert gp.get_history(back) == gp.get_history(sample)
    assert_same_voxels_and_grids(back, sample, ("ct", "seg"))


def test_to_torchio_refuses_a_batch_with_a_clear_error():
    batch = gp.collate([gp.make_sample({"image": torch.zeros(1, 2, 2, 2)})] * 2)
    with pytest.raises(TransformError, match=r"to_torchio: key 'image' is a batch.*decollate"):
        gp.to_torchio(batch)


def test_from_torchio_refuses_what_is_not_a_subject():
    with pytest.raises(TransformError, match=r"from_torchio expects a torchio.Subject, got dict"):
        gp.from_torchio({"image": torch.zeros(1, 2, 2, 2)})
