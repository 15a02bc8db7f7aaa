"""Tests of gpuprep.data.phantom: determinism, geometry, labels and intensities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpuprep.data.labels import BRAIN_LABELS, CSF, GM, PHANTOM_LABELS, WM
from gpuprep.data.phantom import phantom
from gpuprep.errors import ConfigError
from gpuprep.sample import get_affine, get_history

SHAPE = (24, 28, 20)
KEYS = ("image", "label", "brain_mask")


def _assert_same(a: dict, b: dict) -> None:
    for key in KEYS:
        torch.testing.assert_close(a[key].cpu(), b[key].cpu(), rtol=0, atol=0)
        torch.testing.assert_close(get_affine(a, key), get_affine(b, key), rtol=0, atol=0)


def test_same_seed_gives_identical_sample():
    _assert_same(phantom(SHAPE, seed=7), phantom(SHAPE, seed=7))


@pytest.mark.parametrize("key", KEYS)
def test_different_seeds_differ(key):
    a, b = phantom(SHAPE, seed=0), phantom(SHAPE, seed=1)
    assert not torch.equal(a[key], b[key])


def test_keys_shapes_dtypes_and_history(device):
    s = phantom(SHAPE, spacing=(1.5, 2.0, 3.0), seed=2, device=device)
    assert set(s) == {*KEYS, *(f"{k}_meta" for k in KEYS), "history"}
    assert get_history(s) == []
    expected_dtypes = {"image": torch.float32, "label": torch.uint8, "brain_mask": torch.uint8}
    for key in KEYS:
        assert s[key].shape == (1, *SHAPE)
        assert s[key].dtype == expected_dtypes[key]
        assert s[key].device.type == device.type
        meta = s[f"{key}_meta"]
        assert meta["affine"].device.type == "cpu"
        assert meta["affine"].dtype == torch.float64
        assert meta["original_shape"].tolist() == list(SHAPE)
        assert meta["filename"] is None


def test_same_phantom_on_every_device(device):
    _assert_same(phantom(SHAPE, seed=4, device=device), phantom(SHAPE, seed=4))


@pytest.mark.parametrize(
    ("shape", "spacing"), [((16, 16, 16), (1.0, 1.0, 1.0)), ((9, 20, 13), (0.7, 1.2, 3.5))]
)
def test_affine_is_diagonal_spacing_with_centre_at_world_origin(shape, spacing):
    affine = get_affine(phantom(shape, spacing=spacing), "image").numpy()
    np.testing.assert_array_equal(affine[:3, :3], np.diag(spacing))
    np.testing.assert_array_equal(affine[3], [0, 0, 0, 1])
    centre_voxel = (np.array(shape) - 1) / 2  # the centre of the volume, in voxel coordinates
    np.testing.assert_allclose(affine @ np.append(centre_voxel, 1), [0, 0, 0, 1], atol=1e-12)
    corner = affine @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(corner[:3], -np.array(spacing) * centre_voxel)


def test_anatomy_is_centred_in_world_space():
    s = phantom((40, 40, 40), spacing=(1.0, 2.0, 3.0), seed=5)
    mask = s["brain_mask"][0].numpy().astype(bool)
    voxels = np.argwhere(mask)
    world = voxels * np.array([1.0, 2.0, 3.0]) + get_affine(s, "image").numpy()[:3, 3]
    half_extent = np.array([40, 80, 120]) / 2
    assert np.all(np.abs(world.mean(0)) < 0.1 * half_extent)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_label_set_and_nesting(seed):
    label = phantom((32, 32, 32), seed=seed)["label"][0].numpy()
    assert set(np.unique(label).tolist()) == set(PHANTOM_LABELS)
    # The corners are outside the head; the centre is brain (WM, or CSF of a ventricle).
    assert label[0, 0, 0] == 0 and label[-1, -1, -1] == 0
    assert label[16, 16, 16] in (WM, CSF)


@pytest.mark.parametrize("seed", [0, 3])
def test_brain_mask_is_csf_gm_wm(seed):
    s = phantom(SHAPE, seed=seed)
    expected = np.isin(s["label"].numpy(), BRAIN_LABELS).astype(np.uint8)
    np.testing.assert_array_equal(s["brain_mask"].numpy(), expected)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_mean_intensity_is_ordered_wm_gm_csf(seed):
    s = phantom((32, 32, 32), seed=seed)
    image, label = s["image"][0], s["label"][0]
    means = {k: image[label == k].mean().item() for k in (CSF, GM, WM)}
    assert means[WM] > means[GM] > means[CSF] > 0
    assert torch.isfinite(image).all() and image.min() >= 0


def test_noise_and_bias_are_present_but_small():
    s = phantom((32, 32, 32), seed=0)
    values = s["image"][0][s["label"][0] == WM]
    assert values.std() > 0  # not a flat label image
    assert values.std() < 0.25 * values.mean()


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"shape": (7, 16, 16)}, "shape"),
        ({"shape": (16, 16)}, "shape"),
        ({"shape": (16.0, 16, 16)}, "shape"),
        ({"shape": (True, 16, 16)}, "shape"),
        ({"shape": 16}, "shape"),
        ({"shape": "abc"}, "shape"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, -2.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, math.nan, 1.0)}, "spacing"),
        ({"spacing": (1.0, math.inf, 1.0)}, "spacing"),
        ({"spacing": (1.0, 1.0)}, "spacing"),
        ({"spacing": 2.0}, "spacing"),
        ({"seed": 1.5}, "seed"),
        ({"seed": "0"}, "seed"),
        ({"seed": -1}, "seed"),
        ({"seed": None}, "seed"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, argument):
    with pytest.raises(ConfigError) as info:
        phantom(**kwargs)
    message = str(info.value)
    assert argument in message
    assert repr(kwargs[argument]) in message


def test_accepts_numpy_and_torch_sizes():
    s = phantom(torch.Size([16, 16, 16]), spacing=np.array([1.0, 2.0, 3.0]), seed=np.int64(3))
    assert s["image"].shape == (1, 16, 16, 16)
    _assert_same(s, phantom((16, 16, 16), spacing=(1.0, 2.0, 3.0), seed=3))
