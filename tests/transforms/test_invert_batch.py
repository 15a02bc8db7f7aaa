"""gp.invert and gp.unpad on batches: each sample inverted with its own history, as if decollated first."""

from __future__ import annotations

import importlib

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import TransformError
from tests.conftest import oblique_affine

invert_module = importlib.import_module("gpuprep.transforms.invert")  # the module, not gp.invert
KEYS = ["image", "label"]
SHAPES = [(12, 14, 11), (10, 14, 13), (12, 12, 12)]


@pytest.fixture
def files(tmp_path) -> list[dict[str, str]]:
    """Three image + label NIfTI pairs of different shapes and oblique affines."""
    rng = np.random.default_rng(15)
    pairs = []
    for index, shape in enumerate(SHAPES):
        affine = oblique_affine(spacing=(1.0 + index / 4, 0.9, 1.2), angles=(0.1 * index, -0.2, 0.3))
        arrays = {"image": rng.normal(100, 20, shape).astype(np.float32),
                  "label": rng.integers(0, 4, shape).astype(np.uint8)}
        paths = {}
        for key, array in arrays.items():
            paths[key] = str(tmp_path / f"sub-{index}_{key}.nii.gz")
            nib.save(nib.Nifti1Image(array, affine), paths[key])
        pairs.append(paths)
    return pairs


def preprocess(paths: dict[str, str], index: int) -> dict:
    pipeline = gp.Compose([
        gp.LoadImage(KEYS, labels="label"),
        gp.Orientation(KEYS, "RAS"),
        gp.Resample(KEYS, 1.5),
        gp.RandAffine(KEYS, rotate=15, scale=0.1, p=1.0),
    ], seed=index)
    return pipeline(paths)


def assert_same_as_per_sample(result: list[dict], batch: dict, key: str, data: torch.Tensor | None) -> None:
    for index, (restored, sample) in enumerate(zip(result, gp.decollate(batch))):
        alone = gp.invert(sample, key, None if data is None else data[index])
        assert torch.equal(restored[key], alone[key]), (key, index)
        assert torch.equal(gp.get_affine(restored, key), gp.get_affine(alone, key)), (key, index)


def test_invert_pad_collate_batch_of_a_nifti_pipeline_equals_per_sample_invert(files):
    batch = gp.pad_collate([preprocess(paths, index) for index, paths in enumerate(files)])
    for key in KEYS:
        result = gp.invert(batch, key)
        assert isinstance(result, list) and len(result) == len(files)  # the original shapes differ
        assert_same_as_per_sample(result, batch, key, None)
        for restored, paths in zip(result, files):
            original = nib.load(paths[key])
            assert tuple(restored[key].shape[-3:]) == original.shape
            np.testing.assert_allclose(gp.get_affine(restored, key).numpy(), original.affine, atol=1e-6)


def test_invert_batch_of_model_predictions_equals_per_sample_invert(files):
    batch = gp.pad_collate([preprocess(paths, index) for index, paths in enumerate(files)])
    logits = torch.randn(len(files), 3, *batch["image"].shape[-3:], generator=torch.Generator().manual_seed(0))
    assert_same_as_per_sample(gp.invert(batch, "image", logits), batch, "image", logits)
    labels = logits.argmax(1, keepdim=True).to(torch.uint8)
    assert_same_as_per_sample(gp.invert(batch, "image", labels), batch, "image", labels)


def test_invert_batch_of_same_shape_samples_returns_a_batch_resampled_once(files, monkeypatch):
    samples = [gp.LoadImage(KEYS, labels="label")(files[0]) for _ in range(3)]
    augment = gp.Compose([gp.Resample(KEYS, 1.5), gp.RandAffine(KEYS, rotate=15, p=1.0)], seed=1)
    batch = augment(gp.collate(samples))  # one batched call, different parameters per sample
    calls = []
    original = invert_module.resample_steps
    monkeypatch.setattr(invert_module, "resample_steps", lambda volume, *a, **k: calls.append(len(volume))
                        or original(volume, *a, **k))
    restored = gp.invert(batch, "label")
    assert calls == [3]  # the whole batch in one resampling
    assert tuple(restored["label"].shape) == (3, 1, *SHAPES[0]) and tuple(gp.get_affine(restored, "label").shape) == (
        3, 4, 4)
    assert_same_as_per_sample(gp.decollate(restored), batch, "label", None)


def test_invert_batch_refuses_predictions_with_another_batch_size(files):
    batch = gp.pad_collate([preprocess(paths, index) for index, paths in enumerate(files[:2])])
    with pytest.raises(TransformError, match=r"B=2"):
        gp.invert(batch, "image", batch["image"][:1])
    with pytest.raises(TransformError, match="spatial shape"):
        gp.invert(batch, "image", batch["image"][..., :-1])


def test_unpad_undoes_a_spatial_step_applied_to_the_batch_after_pad_collate(files):
    samples = [gp.LoadImage(KEYS, labels="label")(paths) for paths in files]
    batch = gp.pad_collate(samples)
    augmented = gp.Compose([gp.RandAffine(KEYS, rotate=20, p=1.0)], seed=2)(batch)
    for index, (restored, sample) in enumerate(zip(gp.unpad(augmented, "label"), samples)):
        assert restored["label"].shape == sample["label"].shape
        assert torch.equal(gp.get_affine(restored, "label"), gp.get_affine(sample, "label"))
        alone = gp.invert(gp.decollate(augmented)[index], "label")  # back through the rotation and the pad
        assert torch.equal(restored["label"], alone["label"])
