"""Random spatial augmentation: references, reproducibility, fusion, inversion, no host sync."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.random import SAMPLE_INDEX_KEY
from tests.conftest import oblique_affine


def _phantom(index: int = 0, shape=(24, 26, 22)) -> dict:
    sample = gp.data.phantom(shape=shape, spacing=(1.5, 1.2, 1.0), seed=index)
    sample[SAMPLE_INDEX_KEY] = index
    return sample


def test_rand_affine_matches_scipy_affine_transform_on_the_recorded_map():
    """The recorded voxel map applied by scipy.ndimage.affine_transform (linear); tol 1e-5 inside."""
    sample = _phantom()
    out = gp.RandAffine("image", rotate=20, scale=0.15, shear=0.05, translate=3, seed=4)(sample)
    voxel_map = np.asarray(gp.get_history(out)[-1]["params"]["image"]["voxel_map"])
    volume = sample["image"][0].double().numpy()
    reference = ndi.affine_transform(volume, voxel_map, order=1, mode="nearest")
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), -1)
    source = grid @ voxel_map[:3, :3].T + voxel_map[:3, 3]
    inside = ((source >= 0) & (source <= np.array(volume.shape) - 1)).all(-1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out["image"][0].numpy()[inside], reference[inside], atol=1e-5)
    assert torch.equal(gp.get_affine(out, "image"), gp.get_affine(sample, "image"))  # content moves, grid stays


def test_rand_affine_rotation_direction_in_world():
    """+90 degrees about world z with an identity affine is numpy's rot90 in the (0, 1) plane."""
    volume = torch.rand(1, 9, 9, 5, generator=torch.Generator().manual_seed(0))
    sample = gp.make_sample({"image": volume})
    exact = gp.RandAffine("image", rotate=[(0, 0), (0, 0), (90, 90)], mode="nearest", seed=0)(sample)
    np.testing.assert_array_equal(exact["image"][0].numpy(), np.rot90(volume[0].numpy(), 1, axes=(0, 1)))


def test_parameters_do_not_depend_on_batch_size_or_position():
    transform = gp.RandAffine(["image", "label"], rotate=15, scale=0.1, seed=11)
    samples = [_phantom(i) for i in range(4)]
    big = transform(gp.collate(samples))
    small = transform(gp.collate(samples[2:]))
    single = transform(samples[3])
    assert gp.get_history(big)[3] == gp.get_history(small)[1] == gp.get_history(single)
    torch.testing.assert_close(big["image"][3], single["image"], rtol=0, atol=1e-6)
    assert torch.equal(big["label"][3], single["label"])


def test_compose_seed_and_epoch():
    def draws(pipeline, sample):
        return [r["params"]["draw"] for r in gp.get_history(pipeline(sample))]

    make = lambda seed: gp.Compose([gp.RandAffine("image", rotate=10), gp.RandFlip("image", p=0.5)], seed=seed)  # noqa: E731
    sample = _phantom(3)
    assert draws(make(1), sample) == draws(make(1), sample)
    assert draws(make(1), sample) != draws(make(2), sample)
    pipeline = make(1)
    first = draws(pipeline, sample)
    pipeline.set_epoch(1)
    assert draws(pipeline, sample) != first
    # The two random transforms of one pipeline draw from different streams.
    affine_only = gp.Compose([gp.RandAffine("image", rotate=10), gp.RandAffine("image", rotate=10)], seed=1)
    first, second = draws(affine_only, sample)
    assert first != second


def test_same_on_batch():
    batch = gp.collate([_phantom(i) for i in range(3)])
    out = gp.RandAffine("image", rotate=10, same_on_batch=True, seed=0)(batch)
    records = [h[-1]["params"]["draw"] for h in gp.get_history(out)]
    assert records[0] == records[1] == records[2]


def test_fused_with_deterministic_steps_resamples_once(monkeypatch):
    import gpuprep.transforms.chain_geometry as fusion

    keys = ["image", "label"]
    steps = [gp.Resample(keys, 2.0), gp.RandAffine(keys, rotate=10, scale=0.1, seed=3),
             gp.RandFlip(keys, p=0.5, seed=3), gp.CropOrPad(keys, (16, 16, 16))]
    sample = _phantom()
    unfused = gp.Compose(steps, fuse=False)(sample)
    calls = []
    original = fusion.resample
    monkeypatch.setattr(fusion, "resample", lambda *a, **k: calls.append(1) or original(*a, **k))
    fused = gp.Compose(steps)(sample)
    assert len(calls) == 2  # one per key
    # The same records; the fused ones also say that they were resampled together (for gp.replay).
    count = len(steps)
    assert [r.pop("fused") for r in gp.get_history(fused)] == [{"index": i, "count": count} for i in range(count)]
    assert gp.get_history(fused) == gp.get_history(unfused)
    inside = unfused["image"][0] != 0
    # One interpolation instead of two: the chains differ by interpolation error only.
    assert (fused["image"][0] - unfused["image"][0])[inside].abs().mean() < 0.05
    assert (fused["label"] == unfused["label"]).float().mean() > 0.9


def test_invert_random_spatial_steps():
    sample = _phantom(shape=(40, 44, 36))
    keys = ["image", "label"]
    out = gp.Compose([gp.RandAffine(keys, rotate=15, scale=0.1, seed=5), gp.RandFlip(keys, p=1.0, seed=5)])(sample)
    back = gp.invert(out, "label")["label"]
    inside = back > 0
    assert (back[inside] == sample["label"][inside]).float().mean() > 0.95
    flipped = gp.RandFlip(keys, axes=(0, 2), p=1.0, seed=0)(sample)
    assert torch.equal(gp.invert(flipped, "label")["label"], sample["label"])


def test_no_host_synchronisation_on_data(forbid_host_sync):
    """The augmentation never calls .item/.cpu/.numpy/.tolist on volumes (metadata stays on the CPU by design)."""

    batch = gp.collate([_phantom(i) for i in range(3)])
    keys = ["image", "label"]
    pipeline = gp.Compose([gp.RandAffine(keys, rotate=15, scale=0.1, translate=2), gp.RandFlip(keys, p=0.5),
                           gp.RandRotate90(keys, axes=(1, 2), p=0.5, same_on_batch=True)], seed=0)
    forbid_host_sync()
    out = pipeline(batch)
    assert out["image"].shape[0] == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda: gp.RandAffine("image", rotate=-1),
        lambda: gp.RandAffine("image", scale=1.5),
        lambda: gp.RandAffine("image", translate=(3, 1)),
        lambda: gp.RandAffine("image", p=1.5),
        lambda: gp.RandAffine("image", seed=-2),
        lambda: gp.RandFlip("image", axes=3),
        lambda: gp.RandRotate90("image", max_k=4),
    ],
)
def test_bad_arguments(make):
    with pytest.raises(ConfigError):
        make()


def test_labels_keep_dtype_and_values_on_oblique_grids():
    labels = torch.randint(0, 5, (1, 10, 11, 12), dtype=torch.int16)
    sample = gp.make_sample({"image": labels.float(), "label": labels}, affine=oblique_affine())
    out = gp.RandAffine(["image", "label"], rotate=30, scale=0.2, seed=1)(sample)
    assert out["label"].dtype == torch.int16
    assert set(torch.unique(out["label"]).tolist()) <= set(torch.unique(labels).tolist())
