"""The fusion engine: composed maps, one grid per chain for an image and its labels, new kinds of warp."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import gpuprep as gp
import gpuprep.functional.resample_general as resample_general
from gpuprep import records
from gpuprep.functional import fused_sampler
from gpuprep.records import make_step
from gpuprep.transforms import fusion, warp_fields


def _random_maps(rng, count):
    return [np.vstack([rng.normal(size=(3, 4)), [0, 0, 0, 1]]) for _ in range(count)]


@pytest.mark.parametrize("count", [1, 2, 5])
def test_composed_maps_is_the_matrix_product_first_step_on_the_left(count):
    rng = np.random.default_rng(count)
    maps = _random_maps(rng, count)
    chain = [[{"voxel_map": m.tolist()}] for m in maps]
    expected = maps[0] if count == 1 else np.linalg.multi_dot(maps)
    np.testing.assert_allclose(fusion.composed_maps(chain, 1)[0], expected, rtol=1e-12, atol=1e-12)


def test_composed_maps_of_an_empty_chain_is_the_identity():
    np.testing.assert_array_equal(fusion.composed_maps([], 3), np.tile(np.eye(4), (3, 1, 1)))


def test_an_image_and_its_labels_share_one_sampling_grid(monkeypatch):
    monkeypatch.setattr(fused_sampler, "_kernels", lambda: None)  # the torch path: numba's kernels build no grid
    calls = []
    build = resample_general._build_grid_and_mask
    monkeypatch.setattr(resample_general, "_build_grid_and_mask", lambda *a: calls.append(1) or build(*a))
    label = (torch.rand(1, 10, 11, 12) > 0.5).to(torch.uint8)
    sample = gp.make_sample({"image": torch.rand(1, 10, 11, 12), "label": label}, labels=["label"])
    gp.Compose([gp.RandAffine(["image", "label"], rotate=20, seed=0), gp.Flip(["image", "label"], 0)])(sample)
    assert len(calls) == 1
    gp.RandAffine(["image", "label"], rotate=20, seed=0)(sample)  # a new call builds its own grid
    assert len(calls) == 2


def test_a_new_kind_of_warp_needs_only_its_entry_and_its_field_builder(monkeypatch):
    """A step carrying a constant shift field (say, from an optimiser) resamples like scipy's shift."""
    shift = np.array([1.5, -0.5, 0.25])

    def constant_field(steps, device):
        field = torch.tensor([s["constant_shift"] for s in steps], dtype=torch.float32, device=device)
        return field[:, :, None, None, None].expand(len(steps), 3, *steps[0]["in_shape"]).contiguous()

    monkeypatch.setitem(records.WARP_ENTRIES, "constant_shift", "a voxel shift [3] applied everywhere")
    monkeypatch.setitem(warp_fields.FIELD_BUILDERS, "constant_shift", constant_field)
    volume = np.random.default_rng(0).random((9, 10, 11))
    step = {**make_step(volume.shape, np.eye(4), volume.shape, np.eye(4)), "constant_shift": shift.tolist()}
    out = fusion.resample_steps(torch.from_numpy(volume)[None, None].float(), [[step]], volume.shape,
                                how=fusion.Resampling(mode="linear"))
    expected = ndi.shift(volume, -shift, order=1, mode="nearest")  # output voxel x reads input x + shift
    inner = (slice(2, -2),) * 3  # away from the borders, where the padding rules differ
    np.testing.assert_allclose(out[0, 0].numpy()[inner], expected[inner], atol=1e-5)
    inverse = records.inverse_step(step)
    assert inverse["constant_shift"] == step["constant_shift"] and inverse["inverse"] is True


def test_an_image_and_its_labels_are_resampled_in_one_pass_with_the_same_results(monkeypatch):
    """A batch with one random map per sample: the numba kernel reads the image and the label map at the same
    points in one pass; the results equal each key resampled alone (labels exactly)."""
    pytest.importorskip("numba")
    import gpuprep.transforms.chain_geometry as chain_geometry

    samples = []
    for index in range(3):
        generator = torch.Generator().manual_seed(index)
        image = torch.rand((2, 10, 11, 9), generator=generator)
        label = (image[:1] * 4).to(torch.int16)
        samples.append(gp.make_sample({"image": image, "label": label, "t1": image[1:].clone()}))
    steps = [gp.RandAffine(["image", "label", "t1"], rotate=20, scale=0.1, seed=1), gp.Flip(["image", "label"], 1)]
    batch = gp.collate(samples)
    pairs = []
    original = chain_geometry.resample_with_labels
    monkeypatch.setattr(chain_geometry, "resample_with_labels", lambda *a, **k: pairs.append(original(*a, **k))
                        or pairs[-1])
    out = gp.Compose(steps)(batch)
    assert len(pairs) == 1 and pairs[0] is not None  # t1's chain differs (no flip): resampled alone
    monkeypatch.setattr(chain_geometry, "resample_with_labels", lambda *a, **k: None)
    alone = gp.Compose(steps)(batch)
    assert torch.equal(out["label"], alone["label"]) and torch.equal(out["image"], alone["image"])
    assert torch.equal(out["t1"], alone["t1"])
    assert torch.equal(gp.get_affine(out, "label"), gp.get_affine(alone, "label"))


def test_one_hot_labels_ride_along_in_the_same_pass(monkeypatch):
    """A chain that asks for one-hot labels: the image and the labels in one kernel pass, the same as apart."""
    pytest.importorskip("numba")
    import gpuprep.transforms.chain_geometry as chain_geometry

    samples = []
    for index in range(2):
        generator = torch.Generator().manual_seed(index)
        image = torch.rand((1, 12, 11, 10), generator=generator)
        samples.append(gp.make_sample({"image": image, "label": (image * 3).to(torch.uint8)}, labels="label"))
    keys = ["image", "label"]
    upsample = gp.Resample(keys, 0.9, label_mode="onehot", anti_aliasing=False)
    for steps in ([upsample, gp.RandAffine(keys, rotate=20, seed=2)],
                  [upsample, gp.RandElastic(keys, max_displacement=2.0, seed=2)]):
        batch = gp.collate(samples)
        out = gp.Compose(steps)(batch)
        monkeypatch.setattr(chain_geometry, "resample_with_labels", lambda *a, **k: None)
        monkeypatch.setattr(chain_geometry, "warp_image_and_labels", lambda *a, **k: None)
        alone = gp.Compose(steps)(batch)
        monkeypatch.undo()
        assert torch.equal(out["label"], alone["label"])
        torch.testing.assert_close(out["image"], alone["image"], rtol=0, atol=1e-5)
