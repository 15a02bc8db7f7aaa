"""pad_collate: variable-size samples padded like TorchIO's CropOrPad, collated, and undone exactly."""

from __future__ import annotations

import functools

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import gpuprep as gp
from gpuprep.data.pad_collate import PAD_MODES, pad_collate, pad_volume, unpad
from gpuprep.errors import ConfigError, MissingKeyError, TransformError
from tests.conftest import oblique_affine

KEYS = ["image", "label"]
SHAPES = [(10, 12, 9), (8, 12, 11), (10, 10, 10)]
TARGET = (10, 12, 11)


@pytest.fixture
def files(tmp_path) -> list[dict[str, str]]:
    """Three image + label NIfTI pairs of different shapes and affines."""
    rng = np.random.default_rng(5)
    pairs = []
    for index, shape in enumerate(SHAPES):
        affine = oblique_affine(spacing=(1.0 + index / 4, 0.9, 1.5), angles=(0.1 * index, -0.2, 0.3))
        image = rng.normal(100, 20, shape).astype(np.float32)
        label = rng.integers(0, 4, shape).astype(np.uint8)
        paths = {}
        for key, array in (("image", image), ("label", label)):
            paths[key] = str(tmp_path / f"sub-{index}_{key}.nii.gz")
            nib.save(nib.Nifti1Image(array, affine), paths[key])
        pairs.append(paths)
    return pairs


def load(paths: dict[str, str], index: int = 0) -> dict:
    sample = gp.LoadImage(KEYS, labels="label", dtype={"image": "float32"})(paths)
    sample["sample_index"] = index
    return sample


def test_pads_to_the_largest_shape_like_torchio_and_inverts_exactly(files):
    tio = pytest.importorskip("torchio")
    samples = [load(p, i) for i, p in enumerate(files)]
    batch = pad_collate(samples)
    assert tuple(batch["image"].shape) == (3, 1, *TARGET) and tuple(batch["label"].shape) == (3, 1, *TARGET)
    assert batch["image"].dtype == torch.float32 and batch["label"].dtype == torch.uint8
    assert batch["sample_index"] == [0, 1, 2]
    for index, (paths, padded) in enumerate(zip(files, gp.decollate(batch))):
        reference = tio.CropOrPad(TARGET)(tio.Subject(image=tio.ScalarImage(paths["image"]),
                                                    label=tio.LabelMap(paths["label"])))
        for key in KEYS:
            assert torch.equal(padded[key], reference[key].data.to(padded[key].dtype)), (index, key)
            np.testing.assert_allclose(gp.get_affine(padded, key).numpy(), reference[key].affine, atol=1e-9)
            back = gp.invert(padded, key)
            original = nib.load(paths[key])
            assert back[key].dtype == samples[index][key].dtype
            assert torch.equal(back[key], samples[index][key])  # every original voxel, exactly
            assert np.array_equal(gp.get_affine(back, key).numpy(), original.affine)
        records = gp.get_history(padded)
        assert [r["name"] for r in records] == ["LoadImage", "CropOrPad"]  # also for no-op pads


def test_history_replays_to_the_same_batch(files):
    batch = pad_collate([load(p, i) for i, p in enumerate(files)])
    for paths, padded in zip(files, gp.decollate(batch)):
        replayed = gp.replay(dict(paths), gp.get_history(padded))
        for key in KEYS:
            assert torch.equal(replayed[key], padded[key])
            assert torch.equal(gp.get_affine(replayed, key), gp.get_affine(padded, key))


@pytest.mark.parametrize("mode", PAD_MODES)
def test_fill_modes_match_numpy_pad(files, mode):
    samples = [load(p, i) for i, p in enumerate(files)]
    value = 3 if mode == "constant" else 0
    batch = pad_collate(samples, mode=mode, value=value)
    for sample, padded in zip(samples, gp.decollate(batch)):
        for key in KEYS:
            array = sample[key].numpy()
            widths = [(0, 0)] + [((t - n + 1) // 2, t - n - (t - n + 1) // 2) for n, t in zip(array.shape[1:], TARGET)]
            extra = {"constant_values": value} if mode == "constant" else {}
            expected = np.pad(array, widths, mode=mode, **extra)
            assert np.array_equal(padded[key].numpy(), expected), (mode, key)
            assert torch.equal(gp.invert(padded, key, mode="nearest")[key], sample[key])
        fill = gp.get_history(padded)[-1]["params"].get("fill")
        assert fill == (None if mode == "constant" and value == 0 else {"mode": mode, "value": value})


def test_pad_volume_reference_on_a_long_pad():
    volume = torch.arange(24, dtype=torch.int16).reshape(1, 2, 3, 4)
    for mode in ("edge", "symmetric", "wrap", "reflect"):
        got = pad_volume(volume, [3, 0, 5], [9, 3, 13], mode)  # pads wider than the axis itself
        expected = np.pad(volume.numpy(), [(0, 0), (3, 4), (0, 0), (5, 4)], mode=mode)
        assert got.dtype == torch.int16 and np.array_equal(got.numpy(), expected), mode


def test_unpad_slices_predictions_back_to_each_sample_grid(files):
    samples = [load(p, i) for i, p in enumerate(files)]
    batch = pad_collate(samples)
    prediction = (batch["label"].long() + 1) * 10  # a stand-in for a model's output on the batch
    for index, restored in enumerate(unpad(batch, "label", prediction)):
        assert torch.equal(restored["label"], (samples[index]["label"].long() + 1) * 10)
        assert torch.equal(gp.get_affine(restored, "label"), gp.get_affine(samples[index], "label"))
        via_invert = gp.invert(gp.decollate(batch)[index], "label", prediction[index])
        assert torch.equal(via_invert["label"], restored["label"])
    with pytest.raises(TransformError, match="padded grid is"):
        unpad(batch, "image", batch["image"][..., :-1])
    with pytest.raises(TransformError, match="no CropOrPad record"):
        unpad(gp.collate([samples[2]]), "image")


def test_same_shapes_collate_like_collate_with_an_identity_record():
    samples = [gp.make_sample({"image": torch.rand(2, 4, 5, 6)}) for _ in range(3)]
    batch = pad_collate(samples)
    assert torch.equal(batch["image"], gp.collate(samples)["image"])
    steps = [h[-1]["params"]["image"] for h in gp.get_history(batch)]
    assert all(np.array_equal(s["voxel_map"], np.eye(4)) for s in steps)


def test_keys_with_different_target_shapes_and_only_chosen_keys():
    samples = [gp.make_sample({"image": torch.rand(1, *a), "mask": torch.zeros(1, *b, dtype=torch.bool)})
               for a, b in [((4, 5, 6), (2, 2, 2)), ((6, 5, 4), (3, 1, 2))]]
    batch = pad_collate(samples)
    assert tuple(batch["image"].shape) == (2, 1, 6, 5, 6) and tuple(batch["mask"].shape) == (2, 1, 3, 2, 2)
    assert [r["keys"] for r in gp.get_history(batch)[0]] == [["image"], ["mask"]]
    only = [gp.make_sample({"image": torch.rand(1, *s), "other": torch.rand(1, 2, 2, 2)})
            for s in [(3, 3, 3), (4, 4, 4)]]
    assert tuple(pad_collate(only, keys="image")["image"].shape) == (2, 1, 4, 4, 4)


def test_errors_name_the_key_and_the_rule():
    a = gp.make_sample({"image": torch.rand(1, 4, 4, 4), "label": torch.zeros(1, 4, 4, 4, dtype=torch.uint8)})
    b = gp.make_sample({"image": torch.rand(2, 5, 4, 4), "label": torch.zeros(1, 5, 4, 4, dtype=torch.uint8)})
    with pytest.raises(TransformError, match=r"key 'image' has different channel counts across samples \[1, 2\]"):
        pad_collate([a, b])
    c = gp.make_sample({"image": torch.rand(1, 5, 4, 4), "label": torch.zeros(1, 5, 4, 4, dtype=torch.int64)})
    with pytest.raises(TransformError, match="key 'label' has different dtypes"):
        pad_collate([a, c])
    with pytest.raises(TransformError, match=r"value=-1 cannot fill 'label' of dtype torch.uint8"):
        pad_collate([a, a], value=-1)
    with pytest.raises(ConfigError, match=r"mode must be one of .* got 'mirror'"):
        pad_collate([a, a], mode="mirror")
    with pytest.raises(ConfigError, match="value must be a finite number, got nan"):
        pad_collate([a, a], value=float("nan"))
    with pytest.raises(MissingKeyError, match="sample 1 has no image 'mask'"):
        pad_collate([{**a, "mask": a["label"], "mask_meta": a["label_meta"]}, a], keys=["mask"])
    with pytest.raises(TransformError, match="empty"):
        pad_collate([])


def test_as_dataloader_collate_fn_with_workers(files):
    samples = [load(p, i) for i, p in enumerate(files)]
    collate_fn = functools.partial(pad_collate, mode="edge")
    loader = DataLoader(samples, batch_size=2, num_workers=2, collate_fn=collate_fn)
    batches = list(loader)
    assert [tuple(b["image"].shape) for b in batches] == [(2, 1, 10, 12, 11), (1, 1, 10, 10, 10)]
    for batch, group in zip(batches, [samples[:2], samples[2:]]):
        direct = collate_fn(group)
        for key in KEYS:
            assert torch.equal(batch[key], direct[key]) and batch[key].dtype == direct[key].dtype
        assert gp.get_history(batch) == gp.get_history(direct)
