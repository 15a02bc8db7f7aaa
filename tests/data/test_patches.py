"""RandPatches: patches equal slicing at the recorded corners, world coordinates, samplers vs MONAI.

RandPatches turns B samples into B * num_patches patches, so it cannot run in the generic
contract test (tests/transforms/test_contract.py excludes it); the contract points (keys and
dtypes kept, labels preserved, JSON records, seeded and replayable, batch equals singles,
invertible) are checked here.
"""

from __future__ import annotations

import copy
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import RandCropByLabelClassesd, RandCropByPosNegLabeld, RandWeightedCropd

import gpuprep as gp
from gpuprep.data.patches import RandPatches, collate_patches
from gpuprep.errors import ConfigError, MissingKeyError, TransformError
from gpuprep.random import SAMPLE_INDEX_KEY
from tests.conftest import oblique_affine

KEYS = ["image", "label"]
SAMPLERS = {
    "uniform": {},
    "label": {"label_key": "label", "pos_neg_ratio": (2, 1)},
    "classes": {"sampler": "label", "label_key": "label", "class_ratios": [1, 1, 3]},
    "weighted": {"weight_key": "weight"},
}


def _make(name: str, keys=KEYS, **options) -> RandPatches:
    kwargs = {"sampler": name, **SAMPLERS[name], **options}
    kwargs.setdefault("size", (4, 5, 3))
    kwargs.setdefault("seed", 0)
    return RandPatches(keys, **kwargs)


def _sample(index: int = 0, shape=(12, 11, 9), device="cpu") -> dict:
    generator = torch.Generator().manual_seed(index)
    image = torch.rand((1, *shape), generator=generator)
    label = (image > 0.6).to(torch.uint8) + (image > 0.9).to(torch.uint8)
    weight = torch.rand((1, *shape), generator=generator) ** 4
    sample = gp.make_sample({"image": image.to(device), "label": label.to(device), "weight": weight.to(device)},
                            affine=oblique_affine())
    sample[SAMPLE_INDEX_KEY] = index
    return sample


def _corner(out, index):
    return gp.get_history(out)[index][-1]["params"]["start"]


def _cut(volume, start, size):
    return volume[:, start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_patches_equal_slicing_at_the_recorded_corner(name, device):
    samples = [_sample(i, device=device) for i in range(2)]
    out = _make(name, num_patches=3)(gp.collate(samples))
    assert out["image"].shape == (6, 1, 4, 5, 3) and out["label"].shape == (6, 1, 4, 5, 3)
    assert out["image"].device.type == device.type
    assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.uint8
    assert out["weight"].shape == (6, 1, 12, 11, 9)  # keys not cut are repeated per patch
    assert out[SAMPLE_INDEX_KEY] == [0, 0, 0, 1, 1, 1] and out["patch_index"] == [0, 1, 2, 0, 1, 2]
    for index in range(6):
        params = gp.get_history(out)[index][-1]["params"]
        assert params["source"] == index // 3 and params["patch"] == index % 3
        source = samples[index // 3]
        for key in KEYS:
            assert torch.equal(out[key][index], _cut(source[key], params["start"], (4, 5, 3)))
        assert all(isinstance(c, int) for c in params["start"])
        assert params["pad"] == [[0, 0]] * 3
        if name != "uniform":  # the patch holds its drawn centre wherever clamping allowed it
            assert all(0 <= c < n for c, n in zip(params["center"], (12, 11, 9)))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_contract_points(name):
    sample = _sample(0)
    snapshot = copy.deepcopy(sample)
    transform = _make(name, num_patches=2)
    out = transform(sample)
    assert set(sample) <= set(out)
    for key in KEYS:  # input untouched
        assert torch.equal(sample[key], snapshot[key])
        assert torch.equal(gp.get_affine(sample, key), gp.get_affine(snapshot, key))
    assert sample["history"] == []
    assert set(torch.unique(out["label"]).tolist()) <= {0, 1, 2}
    for history in gp.get_history(out):
        assert json.loads(json.dumps(history[-1])) == history[-1]
        assert history[-1]["name"] == "RandPatches"
    again = transform(sample)  # a seed gives the same patches
    assert torch.equal(again["image"], out["image"]) and gp.get_history(again) == gp.get_history(out)
    other = _make(name, num_patches=2, seed=1)(sample)
    assert gp.get_history(other) != gp.get_history(out)
    for index, patch in enumerate(gp.decollate(out)):  # replay of each patch's history cuts it again
        replayed = gp.replay(sample, gp.get_history(patch))
        for key in KEYS:
            assert torch.equal(replayed[key][0], out[key][index])
        np.testing.assert_array_equal(gp.get_affine(replayed, "image")[0], gp.get_affine(patch, "image"))
    rebuilt = gp.Compose.from_yaml(gp.Compose([transform]).to_yaml())
    assert torch.equal(rebuilt(sample)["image"], out["image"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int16])
def test_dtype_kept(dtype):
    sample = _sample(0)
    sample["image"] = (sample["image"] * 100).to(dtype)
    assert _make("uniform")(sample)["image"].dtype == dtype


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_patches_whatever_the_batch(name, device):
    samples = [_sample(i, device=device) for i in range(3)]
    transform = _make(name, num_patches=2)
    batch = transform(gp.collate(samples))
    reordered = transform(gp.collate([samples[2], samples[0]]))
    for index, sample in enumerate(samples):
        single = transform(sample)
        assert torch.equal(batch["image"][2 * index:2 * index + 2], single["image"])
        assert [h[-1]["params"]["start"] for h in gp.get_history(single)] == \
            [h[-1]["params"]["start"] for h in gp.get_history(batch)[2 * index:2 * index + 2]]
    assert torch.equal(reordered["image"][:2], batch["image"][4:])
    assert torch.equal(reordered["image"][2:], batch["image"][:2])


def test_compose_seed_and_epoch():
    sample = _sample(0)
    pipeline = gp.Compose([_make("uniform", seed=None, num_patches=4)], seed=5)
    first = [_corner(pipeline(sample), i) for i in range(4)]
    assert first == [_corner(pipeline(sample), i) for i in range(4)]
    pipeline.set_epoch(1)
    assert first != [_corner(pipeline(sample), i) for i in range(4)]


def test_world_coordinates_follow_the_corner():
    sample = _sample(0)
    out = _make("uniform", num_patches=4)(sample)
    source = gp.get_affine(sample, "image").numpy()
    voxels = np.array([[0, 0, 0, 1], [3, 4, 2, 1], [1, 0, 2, 1]], dtype=float).T
    for index in range(4):
        start = np.array([*_corner(out, index), 0])
        patch_affine = gp.get_affine(out, "image")[index].numpy()
        np.testing.assert_allclose(patch_affine @ voxels, source @ (voxels + start[:, None]), atol=1e-9)
        original = gp.get_meta(sample, "image")["original_affine"]
        assert gp.get_meta(out, "image")["original_affine"][index].equal(original)


def test_uniform_covers_the_valid_range():
    shape, size = (9, 7, 5), (4, 4, 5)
    out = RandPatches("image", size, num_patches=300, seed=3)(gp.make_sample({"image": torch.rand(1, *shape)}))
    starts = np.array([_corner(out, i) for i in range(300)])
    for axis, (n, s) in enumerate(zip(shape, size)):
        counts = np.bincount(starts[:, axis], minlength=n - s + 1)
        assert len(counts) == n - s + 1  # nothing beyond the last valid corner
        # every valid corner is drawn about equally often (expected 300 / positions each)
        assert counts.min() > 0.5 * 300 / (n - s + 1) and counts.max() < 1.6 * 300 / (n - s + 1)


def _centre_locations(patches, size):
    """Flat source indices of the patch centres, read from an image holding each voxel's flat index."""
    centre = tuple(s // 2 for s in size)
    return np.array([int(p[(0, *centre)]) for p in patches])


def test_label_sampler_frequency_matches_pos_ratio_and_monai():
    shape, size, count = (20, 20, 20), (4, 4, 4), 400
    grid = np.indices(shape)
    label = ((grid - 9.5) ** 2).sum(0) < 5.5**2  # a ball far from the border: centres are not clamped
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(1, *shape)
    sample = gp.make_sample({"image": torch.from_numpy(image), "label": torch.from_numpy(label[None].astype(np.uint8))})
    ours = RandPatches(KEYS, size, num_patches=count, sampler="label", label_key="label", pos_neg_ratio=(3, 1),
                       seed=0)(sample)
    ours_fg = label.flat[_centre_locations(ours["image"], size)].mean()
    monai = RandCropByPosNegLabeld(KEYS, "label", size, pos=3, neg=1, num_samples=count)
    monai.set_random_state(0)
    crops = monai({"image": image, "label": label[None].astype(np.uint8)})
    monai_fg = label.flat[_centre_locations([c["image"] for c in crops], size)].mean()
    # binomial standard deviation sqrt(.75 * .25 / 400) = 0.022: 0.08 is ~3.7 of them
    assert abs(ours_fg - 0.75) < 0.08 and abs(monai_fg - 0.75) < 0.08
    assert abs(ours_fg - monai_fg) < 0.1
    recorded = [h[-1]["params"] for h in gp.get_history(ours)]
    assert all(p["class"] == int(label[tuple(p["center"])]) for p in recorded)  # class 1 = foreground


def test_label_sampler_clamps_centres_like_monai():
    label = np.zeros((1, 10, 10, 10), np.uint8)
    label[0, 0, 0, 0] = 1  # the only foreground voxel sits in a corner
    sample = gp.make_sample({"label": torch.from_numpy(label)})
    out = RandPatches("label", (4, 5, 3), num_patches=5, sampler="label", label_key="label", pos_neg_ratio=(1, 0),
                      seed=0)(sample)
    monai = RandCropByPosNegLabeld(["label", "index"], "label", (4, 5, 3), pos=1, neg=0, num_samples=1)
    crop = monai({"label": label, "index": np.arange(1000, dtype=np.float32).reshape(1, 10, 10, 10)})[0]
    expected = np.unravel_index(int(crop["index"][0, 0, 0, 0]), (10, 10, 10))
    assert [_corner(out, i) for i in range(5)] == [list(map(int, expected))] * 5 == [[0, 0, 0]] * 5
    assert all(h[-1]["params"]["center"] == [0, 0, 0] for h in gp.get_history(out))


def test_class_ratios_frequencies_match_monai():
    shape, size, count = (16, 16, 16), (1, 1, 1), 600  # one-voxel patches: no centre is clamped
    rng = np.random.default_rng(0)
    label = rng.choice(3, size=shape, p=[0.7, 0.2, 0.1]).astype(np.uint8)[None]  # class 3 absent
    ratios = [1, 2, 1, 5]  # an absent class is not drawn: effective frequencies 1/4, 1/2, 1/4
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(1, *shape)
    sample = gp.make_sample({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
    out = RandPatches("image", size, num_patches=count, sampler="label", label_key="label", class_ratios=ratios,
                      seed=0)(sample)
    params = [h[-1]["params"] for h in gp.get_history(out)]
    ours = np.bincount([p["class"] for p in params], minlength=4) / count
    assert all(p["class"] == label[(0, *p["center"])] for p in params)
    monai = RandCropByLabelClassesd(["image"], "label", size, ratios=ratios, num_classes=4, num_samples=count,
                                    warn=False)
    monai.set_random_state(0)
    centres = _centre_locations([c["image"] for c in monai({"image": image, "label": label})], size)
    theirs = np.bincount(label.flat[centres], minlength=4) / count
    expected = np.array([0.25, 0.5, 0.25, 0.0])
    assert np.abs(ours - expected).max() < 0.07 and np.abs(theirs - expected).max() < 0.07  # sd <= 0.021
    assert ours[3] == 0 == theirs[3]


def test_one_hot_labels_and_missing_classes():
    label = torch.zeros(3, 8, 8, 8)
    label[1, 2:4, 2:4, 2:4] = 1
    sample = gp.make_sample({"label": label})
    out = RandPatches("label", 2, num_patches=20, sampler="label", label_key="label", class_ratios=[0, 1, 1],
                      seed=0)(sample)  # class 2 has no voxel: every centre is in class 1's cube
    for history in gp.get_history(out):
        params = history[-1]["params"]
        assert params["class"] == 1 and all(2 <= c < 4 for c in params["center"])
    empty = gp.make_sample({"label": torch.zeros(1, 8, 8, 8, dtype=torch.uint8)})
    with pytest.raises(TransformError, match="no voxel of any class"):
        RandPatches("label", 2, sampler="label", label_key="label", class_ratios=[0, 1], seed=0)(empty)


def test_weighted_sampler_follows_the_weight_map(device):
    weight = torch.zeros(1, 12, 12, 12)
    weight[0, 5, 6, 7] = 2.0  # one voxel: every patch is centred on it
    sample = gp.make_sample({"image": torch.rand(1, 12, 12, 12).to(device), "weight": weight.to(device)})
    out = RandPatches("image", 4, num_patches=10, sampler="weighted", weight_key="weight", seed=0)(sample)
    assert [_corner(out, i) for i in range(10)] == [[3, 4, 5]] * 10
    monai = RandWeightedCropd(["image"], "weight", (4, 4, 4), num_samples=1)(
        {"image": np.arange(12**3, dtype=np.float32).reshape(1, 12, 12, 12), "weight": weight.numpy()})[0]
    assert np.unravel_index(int(monai["image"][0, 2, 2, 2]), (12,) * 3) == (5, 6, 7)


def test_weighted_frequencies_match_monai():
    shape, count = (10, 10, 10), 800
    weight = np.zeros((1, *shape), np.float32)
    spots = [(3, 4, 5), (5, 5, 5), (6, 3, 4)]
    for spot, value in zip(spots, (1.0, 2.0, 5.0)):
        weight[(0, *spot)] = value
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(1, *shape)
    sample = gp.make_sample({"image": torch.from_numpy(image), "weight": torch.from_numpy(weight)})
    out = RandPatches("image", 4, num_patches=count, sampler="weighted", weight_key="weight", seed=0)(sample)
    monai = RandWeightedCropd(["image"], "weight", (4, 4, 4), num_samples=count)
    monai.set_random_state(0)
    expected = np.array([1, 2, 5]) / 8
    flat = [np.ravel_multi_index(s, shape) for s in spots]
    for centres in (_centre_locations(out["image"], (4, 4, 4)),
                    _centre_locations([c["image"] for c in monai({"image": image, "weight": weight})], (4, 4, 4))):
        assert set(centres) <= set(flat)
        frequencies = np.array([(centres == f).mean() for f in flat])
        assert np.abs(frequencies - expected).max() < 0.06  # sd <= 0.018


def test_weighted_all_zero_is_uniform_over_valid_centres():
    sample = gp.make_sample({"image": torch.rand(1, 9, 9, 9), "weight": torch.zeros(1, 9, 9, 9)})
    out = RandPatches("image", 4, num_patches=200, sampler="weighted", weight_key="weight", seed=0)(sample)
    starts = np.array([_corner(out, i) for i in range(200)])
    assert starts.min() == 0 and starts.max() == 5  # every valid corner, including the last one


@pytest.mark.parametrize("name", ["uniform", "label", "weighted"])
def test_small_volume_is_padded_and_recorded(name):
    sample = _sample(0, shape=(3, 11, 9))
    out = _make(name, size=(6, 5, 3), num_patches=4)(sample)
    for index in range(4):
        params = gp.get_history(out)[index][-1]["params"]
        assert params["start"][0] == -1 and params["pad"] == [[1, 2], [0, 0], [0, 0]]  # 3 voxels: 1 before, 2 after
        _, j, k = params["start"]
        expected = np.pad(sample["image"][0, :, j:j + 5, k:k + 3].numpy(), [(1, 2), (0, 0), (0, 0)])
        np.testing.assert_array_equal(out["image"][index, 0].numpy(), expected)


def test_invert_puts_a_patch_back_on_the_original_grid():
    sample = _sample(0)
    pipeline = gp.Compose([gp.Orientation(KEYS, "LPS"), _make("label", num_patches=2)], seed=0)
    out = pipeline(sample)
    oriented = gp.Orientation(KEYS, "LPS")(sample)
    for index, patch in enumerate(gp.decollate(out)):
        back = gp.invert(patch, "label")
        assert back["label"].shape == sample["label"].shape and back["label"].dtype == torch.uint8
        np.testing.assert_array_equal(back["label_meta"]["affine"].numpy(), gp.get_affine(sample, "label").numpy())
        # the patch region, put back in the oriented grid, then back to the original orientation
        placed = torch.zeros_like(oriented["label"])
        start = _corner(out, index)
        _cut(placed, start, (4, 5, 3))[...] = _cut(oriented["label"], start, (4, 5, 3))
        assert torch.equal(back["label"], gp.invert(oriented, "label", data=placed)["label"])


def test_no_volume_leaves_the_device(forbid_host_sync):
    samples = gp.collate([_sample(i) for i in range(2)])
    forbid_host_sync()
    for name in SAMPLERS:
        _make(name, num_patches=2)(samples)


def test_config_and_data_errors():
    with pytest.raises(ConfigError, match="size"):
        RandPatches("image", (4, 4))
    with pytest.raises(ConfigError, match="num_patches"):
        RandPatches("image", 4, num_patches=0)
    with pytest.raises(ConfigError, match="sampler"):
        RandPatches("image", 4, sampler="random")
    with pytest.raises(ConfigError, match="label_key"):
        RandPatches("image", 4, sampler="label")
    with pytest.raises(ConfigError, match="weight_key"):
        RandPatches("image", 4, weight_key="weight")
    with pytest.raises(ConfigError, match="not both"):
        RandPatches("image", 4, sampler="label", label_key="label", pos_neg_ratio=(1, 1), class_ratios=[1, 1])
    with pytest.raises(ConfigError, match="pos_neg_ratio"):
        RandPatches("image", 4, sampler="label", label_key="label", pos_neg_ratio=(1, -1))
    with pytest.raises(ConfigError, match="class_ratios"):
        RandPatches("image", 4, sampler="label", label_key="label", class_ratios=[0, 0])
    sample = _sample(0)
    with pytest.raises(MissingKeyError, match="seg"):
        RandPatches("image", 4, sampler="label", label_key="seg")(sample)
    sample["label"] = sample["label"][:, :5]
    with pytest.raises(TransformError, match="share their spatial shape"):
        _make("uniform")(sample)


def test_dataloader_workers_with_collate_patches(tmp_path):
    paths = []
    for index in range(4):
        sample = _sample(index)
        for key in KEYS:
            path = tmp_path / f"{key}{index}.nii.gz"
            nib.save(nib.Nifti1Image(sample[key][0].numpy(), oblique_affine()), path)
        paths.append({"image": str(tmp_path / f"image{index}.nii.gz"), "label": str(tmp_path / f"label{index}.nii.gz")})
    pipeline = gp.Compose([gp.LoadImage("image", dtype="float32"), gp.LoadImage("label", labels=True),
                           _make("label", seed=None, num_patches=2)], seed=7)

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, index):
            return pipeline({**paths[index], SAMPLE_INDEX_KEY: index})

    loader = torch.utils.data.DataLoader(Files(), batch_size=2, num_workers=2, collate_fn=collate_patches)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [4, 4]
    for position, batch in enumerate(batches):
        for offset in range(2):
            expected = pipeline({**paths[2 * position + offset], SAMPLE_INDEX_KEY: 2 * position + offset})
            assert torch.equal(batch["image"][2 * offset:2 * offset + 2], expected["image"])
            assert batch["label"].dtype == expected["label"].dtype
        patches = gp.decollate(batch)
        assert len(patches) == 4 and patches[1]["image_meta"]["filename"].endswith(f"image{2 * position}.nii.gz")


def test_augmentation_after_patches_draws_per_patch():
    """The patches of one sample are augmented with parameters of their own, reproducibly."""
    import gpuprep as gp

    sample = gp.make_sample({"image": torch.rand(1, 12, 12, 12)})
    sample["sample_index"] = 5
    pipeline = gp.Compose([RandPatches("image", size=6, num_patches=3), gp.RandAffine("image", rotate=20)], seed=0)
    out = pipeline(sample)
    rotations = [tuple(h[-1]["params"]["draw"]["rotate"]) for h in out["history"]]
    assert len(set(rotations)) == 3
    assert rotations == [tuple(h[-1]["params"]["draw"]["rotate"]) for h in pipeline(sample)["history"]]
