"""Padding follows the kind and the modality: labels pad with 0, images with ``padding_value`` (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError

AIR = -1000.0


def _ct(seed=0, shape=(10, 12, 14)):
    """A CT in HU: air around a body of soft tissue (40) with bone (up to 2000), and its label map."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, AIR, dtype=np.float32)
    hu[2:-2, 2:-2, 2:-2] = 40 + rng.normal(0, 10, (shape[0] - 4, shape[1] - 4, shape[2] - 4))
    hu[4:6, 4:8, 5:9] = rng.uniform(700, 2000, (2, 4, 4))
    label = np.zeros(shape, dtype=np.uint8)
    label[2:-2, 2:-2, 2:-2] = 1
    label[4:6, 4:8, 5:9] = 2
    return gp.make_sample({"ct": torch.from_numpy(hu)[None], "seg": torch.from_numpy(label)[None]}, labels="seg")


def _outside(step: dict, margin: float = 0.5) -> np.ndarray:
    """Output voxels whose source point lies beyond ``margin`` voxels outside the input (negative: inside)."""
    voxel_map, shape = np.asarray(step["voxel_map"]), step["in_shape"]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in step["out_shape"]], indexing="ij"), -1)
    source = grid @ voxel_map[:3, :3].T + voxel_map[:3, 3]
    return np.any((source < -margin - 1e-6) | (source > np.asarray(shape) - 1 + margin + 1e-6), axis=-1)


@pytest.mark.parametrize("padding_value", [AIR, "minimum"])
def test_ct_in_hu_pads_with_air(padding_value):
    sample = _ct()
    keys = ["ct", "seg"]
    pad = gp.CropOrPad(keys, (14, 16, 18), padding_value=padding_value)
    padded = pad(sample)
    inside = (slice(2, 12), slice(2, 14), slice(2, 16))
    frame = torch.ones(14, 16, 18, dtype=torch.bool)
    frame[inside] = False
    assert torch.all(padded["ct"][0][frame] == AIR) and torch.all(padded["seg"][0][frame] == 0)
    assert torch.equal(padded["ct"][0][inside], sample["ct"][0])  # the pad itself is exact

    affine = gp.RandAffine(keys, translate=[(30, 30), (0, 0), (0, 0)], rotate=10, padding_value=padding_value, seed=4)
    moved = affine(sample)
    step = gp.get_history(moved)[-1]["params"]["ct"]
    outside = torch.from_numpy(_outside(step))
    assert outside.any()
    assert torch.all(moved["ct"][0][outside] == AIR) and torch.all(moved["seg"][0][outside] == 0)
    # Where the point is inside, the result is scipy's linear interpolation of the same map.
    voxel_map = np.asarray(step["voxel_map"])
    reference = ndi.affine_transform(sample["ct"][0].double().numpy(), voxel_map[:3, :3], voxel_map[:3, 3],
                                     order=1, mode="nearest")
    np.testing.assert_allclose(moved["ct"][0][~outside].numpy(), reference[~outside.numpy()], atol=2e-2)

    # Fused and unfused agree; a batch equals its samples one by one.
    shift = [(30, 30), (0, 0), (0, 0)]
    chain = [pad, gp.RandAffine(keys, translate=shift, rotate=10, padding_value=padding_value, seed=4)]
    fused = gp.Compose(chain, seed=1)(sample)
    unfused = gp.Compose(chain, seed=1, fuse=False)(sample)
    fused_outside = fused["ct"] == AIR
    assert (fused_outside == (unfused["ct"] == AIR)).float().mean() > 0.98
    both = fused_outside & (unfused["ct"] == AIR)
    assert torch.all(fused["seg"][both] == 0) and torch.all(unfused["seg"][both] == 0)
    other = _ct(seed=1)
    batch = gp.Compose(chain, seed=1)(gp.collate([sample, other]))
    for single, from_batch in zip([sample, other], gp.decollate(batch)):
        alone = gp.replay(single, gp.get_history(from_batch))  # the same parameters, one sample
        torch.testing.assert_close(alone["ct"], from_batch["ct"], atol=1e-3, rtol=0)
        assert torch.equal(alone["seg"], from_batch["seg"])
        assert (from_batch["ct"] == AIR).any()


def test_padding_value_minimum_is_per_sample_and_channel_without_host_sync(forbid_host_sync):
    data = torch.stack([torch.rand(2, 4, 4, 4) + torch.tensor([-5.0, 3.0]).view(2, 1, 1, 1),
                        torch.rand(2, 4, 4, 4) + torch.tensor([7.0, -1.0]).view(2, 1, 1, 1)])
    minima = data.amin(dim=(2, 3, 4))
    batch = gp.collate([gp.make_sample({"image": d}) for d in data])
    transforms = [gp.CropOrPad("image", (6, 6, 6), padding_value="minimum"),
                  gp.PadToMultiple("image", 8, padding_value="minimum"),
                  gp.Resize("image", (7, 7, 7), padding_value="minimum"),
                  gp.RandAffine("image", translate=10, padding_value="minimum", seed=0),
                  gp.RandElastic("image", num_control_points=5, max_displacement=1.0, padding_value="minimum",
                                 seed=0)]
    forbid_host_sync()
    padding = [t(batch)["image"] for t in transforms[:2]]
    padding.append(gp.Compose([transforms[0], transforms[3]])(batch)["image"])  # fused
    for out in padding:
        torch.testing.assert_close(out[..., 0, 0, 0], minima, rtol=0, atol=1e-6)
    for transform in transforms[2:]:  # interpolating ones compute their minima on the device too
        transform(batch)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resample_pads_with_the_value_like_scipy_constant(mode):
    rng = np.random.default_rng(2)
    volume = ndi.gaussian_filter(rng.normal(size=(9, 10, 11)), 1.5) * 100 + 300
    sample = gp.make_sample({"image": torch.from_numpy(volume)[None]})
    out = gp.RandAffine("image", rotate=30, translate=3, mode=mode, padding_value=AIR, seed=7)(sample)
    step = gp.get_history(out)[-1]["params"]["image"]
    voxel_map = np.asarray(step["voxel_map"])
    order = {"nearest": 0, "linear": 1, "cubic": 3}[mode]
    # Points beyond half a voxel are the constant in both; within the input, scipy interpolates.
    reference = ndi.affine_transform(volume, voxel_map[:3, :3], voxel_map[:3, 3], order=order, mode="nearest")
    outside = _outside(step)
    ours = out["image"][0].numpy()
    assert outside.any() and np.all(ours[outside] == AIR)
    # The cubic prefilter's boundary rule differs from scipy's "nearest": compare 2 voxels in.
    compared = ~_outside(step, margin=-2.0 if mode == "cubic" else 0.0)
    assert compared.sum() > 50
    assert np.abs(ours[compared] - reference[compared]).max() < 1e-3 * 300


def test_padding_value_of_a_constant_image_under_cubic_rotation_stays_exact_inside():
    sample = gp.make_sample({"image": torch.full((1, 9, 9, 9), 500.0, dtype=torch.float64)})
    out = gp.RandAffine("image", rotate=40, mode="cubic", padding_value=AIR, seed=1)(sample)
    outside = torch.from_numpy(_outside(gp.get_history(out)[-1]["params"]["image"]))
    torch.testing.assert_close(out["image"][0][~outside], torch.full_like(out["image"][0][~outside], 500.0))
    assert torch.all(out["image"][0][outside] == AIR)


def test_fused_chain_with_different_padding_values_is_split_and_matches_unfused():
    sample = _ct()
    chain = [gp.CropOrPad(["ct", "seg"], (14, 16, 18), padding_value=AIR),
             gp.Flip(["ct", "seg"], 0),
             gp.CropOrPad(["ct", "seg"], (16, 18, 20))]  # pads with 0 around the -1000 frame
    fused = gp.Compose(chain)(sample)
    unfused = gp.Compose(chain, fuse=False)(sample)
    assert torch.equal(fused["ct"], unfused["ct"]) and torch.equal(fused["seg"], unfused["seg"])
    assert fused["ct"][0, 0, 0, 0] == 0 and fused["ct"][0, 1, 1, 1] == AIR
    assert [r["name"] for r in gp.get_history(fused)] == ["CropOrPad", "Flip", "CropOrPad"]


def test_invert_pads_images_with_their_padding_value_and_labels_with_zero():
    sample = _ct()
    sample = {**sample, "ct": sample["ct"] + 1500.0}  # no voxel at -1000 any more: the pad is visible
    cropped = gp.CropOrPad(["ct", "seg"], (6, 8, 10), padding_value=AIR)(sample)
    back_ct, back_seg = gp.invert(cropped, "ct")["ct"], gp.invert(cropped, "seg")["seg"]
    inside = (slice(2, 8), slice(2, 10), slice(2, 12))
    cut = torch.ones(10, 12, 14, dtype=torch.bool)
    cut[inside] = False
    assert torch.all(back_ct[0][cut] == AIR) and torch.all(back_seg[0][cut] == 0)
    assert torch.equal(back_ct[0][inside], sample["ct"][0][inside])
    assert back_seg.dtype == torch.uint8 and torch.equal(back_seg[0][inside], sample["seg"][0][inside])


@pytest.mark.parametrize("bad", ["maximum", float("nan"), True, None])
def test_padding_value_is_validated(bad):
    with pytest.raises(ConfigError, match="CropOrPad: padding_value must be a finite number or 'minimum'"):
        gp.CropOrPad("image", (4, 4, 4), padding_value=bad)


def test_padding_value_round_trips_through_yaml_and_replay():
    pipeline = gp.Compose([gp.Resample("ct", 2.0, padding_value="minimum"),
                           gp.RandAffine("ct", translate=20, padding_value=AIR, seed=0)], seed=3)
    rebuilt = gp.Compose.from_yaml(pipeline.to_yaml())
    assert rebuilt.transforms[0].padding_value == "minimum" and rebuilt.transforms[1].padding_value == AIR
    sample = _ct()
    out = pipeline(sample)
    replayed = gp.replay(sample, gp.get_history(out))
    torch.testing.assert_close(replayed["ct"], out["ct"])
