"""Every transform follows the kind of a key ("image" or "label"), never its dtype (issue 14, section 1)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError, TransformError


def _write_nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _blob(shape=(12, 12, 12), seed=0):
    """A smooth positive volume (a head-like blob) with noise."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    blob = np.exp(-2.0 * (grid**2).sum(0))
    return blob + 0.05 * np.random.default_rng(seed).random(shape)


def _labels(shape=(12, 12, 12)):
    label = np.zeros(shape, dtype=np.uint8)
    label[3:9, 3:9, 3:9] = 1
    label[5:7, 5:7, 2:10] = 7
    return label


def test_aniso_vox_int16_loaded_plainly_resamples_linearly_like_nibabel():
    dipy_data = pytest.importorskip("dipy.data")
    from nibabel.processing import resample_from_to

    path = dipy_data.get_fnames(name="aniso_vox")
    image = nib.load(path)
    assert image.get_data_dtype() == np.int16  # the case of the issue: an int16 scan, 4x4x5 mm
    sample = gp.LoadImage("image")({"image": path})
    out = gp.Resample("image", spacing=2.0)(sample)
    shape, affine = tuple(out["image"].shape[1:]), gp.get_affine(out, "image").numpy()
    reference = resample_from_to(image, (shape, affine), order=1).get_fdata()
    ours = out["image"][0].numpy()
    head = reference > 0.2 * np.percentile(reference, 99)
    assert out["image"].dtype == torch.float32 and gp.get_kind(out, "image") == "image"
    assert np.corrcoef(ours[head], reference[head])[0, 1] > 0.999
    # Linear interpolation lands within a grey level of nibabel's, nearest neighbour would not.
    assert np.abs(ours - reference)[head].max() < 0.01 * np.percentile(reference, 99)


def test_int16_and_uint16_images_load_as_float32_images(tmp_path):
    values = (_blob() * 3000).astype(np.int16)
    paths = {"ct": _write_nifti(tmp_path / "ct.nii.gz", values),
             "mr": _write_nifti(tmp_path / "mr.nii.gz", values.astype(np.uint16)),
             "seg": _write_nifti(tmp_path / "seg.nii.gz", _labels())}
    sample = gp.LoadImage(["ct", "mr", "seg"], labels="seg")(paths)
    assert [sample[k].dtype for k in ("ct", "mr", "seg")] == [torch.float32, torch.float32, torch.uint8]
    assert [gp.get_kind(sample, k) for k in ("ct", "mr", "seg")] == ["image", "image", "label"]
    np.testing.assert_array_equal(sample["ct"][0].numpy(), nib.load(paths["ct"]).get_fdata())
    np.testing.assert_array_equal(sample["seg"][0].numpy(), _labels())
    # dtype= still overrides per key
    kept = gp.LoadImage(["ct", "seg"], labels=["seg"], dtype={"ct": "int16"})(paths)
    assert kept["ct"].dtype == torch.int16 and gp.get_kind(kept, "ct") == "image"


def test_float_label_file_loads_as_the_smallest_integer_dtype(tmp_path):
    label = _labels().astype(np.float32)
    label[0, 0, 0] = 300  # needs int16
    path = _write_nifti(tmp_path / "seg_float.nii.gz", label)
    out = gp.LoadImage("seg", labels=True)({"seg": path})
    assert out["seg"].dtype == torch.int16
    np.testing.assert_array_equal(out["seg"][0].numpy(), label.astype(np.int16))


def test_float_label_file_with_fractional_values_is_refused(tmp_path):
    label = _labels().astype(np.float32)
    label[1, 1, 1] = 0.5
    path = _write_nifti(tmp_path / "prob.nii.gz", label)
    with pytest.raises(TransformError, match=r"prob\.nii\.gz.*not whole numbers"):
        gp.LoadImage("seg", labels="seg")({"seg": path})


def test_load_image_labels_must_be_a_subset_of_keys():
    with pytest.raises(ConfigError, match=r"labels \['seg'\] are not among keys \['image'\]"):
        gp.LoadImage("image", labels="seg")
    with pytest.raises(ConfigError, match="labels must be a key"):
        gp.LoadImage("image", labels=3)


def test_load_image_labels_round_trip_through_yaml(tmp_path):
    pipeline = gp.Compose([gp.LoadImage(["image", "seg"], labels=["seg"])])
    rebuilt = gp.Compose.from_yaml(pipeline.to_yaml())
    assert rebuilt.transforms[0].get_config()["labels"] == ["seg"]
    paths = {"image": _write_nifti(tmp_path / "i.nii.gz", (_blob() * 100).astype(np.int16)),
             "seg": _write_nifti(tmp_path / "s.nii.gz", _labels())}
    out = rebuilt(paths)
    assert gp.get_kind(out, "seg") == "label" and gp.get_kind(out, "image") == "image"


def test_declared_int_label_keeps_dtype_and_values_through_resample_randaffine_invert():
    label = torch.from_numpy(_labels()).to(torch.int16)[None]
    sample = gp.make_sample({"image": torch.from_numpy(_blob()).float()[None], "seg": label}, labels="seg")
    out = gp.Compose([gp.Resample(["image", "seg"], spacing=0.7),
                      gp.RandAffine(["image", "seg"], rotate=20, translate=2, seed=3)])(sample)
    assert out["seg"].dtype == torch.int16
    assert set(out["seg"].unique().tolist()) <= {0, 1, 7}
    back = gp.invert(out, "seg")["seg"]
    assert back.dtype == torch.int16 and back.shape == label.shape
    assert set(back.unique().tolist()) <= {0, 1, 7}


def test_float_label_declared_a_label_is_resampled_by_nearest_neighbour():
    as_int = torch.from_numpy(_labels())[None]
    floats = gp.make_sample({"seg": as_int.float()}, labels="seg")
    ints = gp.make_sample({"seg": as_int}, labels="seg")
    for transform in (gp.Resample("seg", spacing=0.6), gp.RandAffine("seg", rotate=25, seed=1)):
        from_float, from_int = transform(floats)["seg"], transform(ints)["seg"]
        assert from_float.dtype == torch.float32
        torch.testing.assert_close(from_float, from_int.float(), rtol=0, atol=0)
    # Nearest neighbour as scipy's zoom with order 0 on the same grid (the grid of Resize: grid_mode).
    resized = gp.Resize("seg", (24, 24, 24))(floats)["seg"][0].numpy()
    np.testing.assert_array_equal(resized, ndi.zoom(_labels().astype(np.float32), 2, order=0, grid_mode=True,
                                                    mode="grid-constant"))
    onehot = gp.Resample("seg", spacing=0.6, label_mode="onehot")(floats)["seg"]
    assert set(onehot.unique().tolist()) <= {0.0, 1.0, 7.0}


def test_int_image_made_with_labels_empty_is_interpolated_linearly():
    values = torch.from_numpy((_blob() * 1000).astype(np.int16))[None]
    sample = gp.make_sample({"image": values}, labels=[])
    out = gp.Resize("image", (20, 20, 20), anti_aliasing=False)(sample)["image"]
    assert out.dtype == torch.float32
    reference = ndi.zoom(values[0].double().numpy(), 20 / 12, order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(out[0].numpy(), reference, rtol=1e-5, atol=1e-2)
    # The dtype rule (no labels=) still makes an integer tensor a label map.
    assert gp.get_kind(gp.make_sample({"image": values}), "image") == "label"


def test_intensity_transforms_touch_int16_declared_image_and_never_float_label():
    image = torch.from_numpy((_blob() * 1000).astype(np.int16))[None]
    float_label = torch.from_numpy(_labels()).float()[None]
    sample = gp.make_sample({"image": image, "seg": float_label}, labels="seg")
    normalized = gp.ZNormalize(["image", "seg"])(sample)
    x = image.double()
    torch.testing.assert_close(normalized["image"].double(), (x - x.mean()) / x.std(), rtol=1e-4, atol=1e-4)
    assert torch.equal(normalized["seg"], float_label)
    noisy = gp.RandNoise(["image", "seg"], std=5.0, seed=0)(sample)
    assert noisy["image"].dtype == torch.float32 and not torch.equal(noisy["image"], image.float())
    assert torch.equal(noisy["seg"], float_label)


@pytest.mark.parametrize("transform", [
    gp.GaussianDenoise(["image", "seg"], sigma=1.0), gp.MedianDenoise(["image", "seg"]),
    gp.RandGamma(["image", "seg"], seed=0), gp.RandBiasField(["image", "seg"], seed=0),
    gp.RandMotion(["image", "seg"], seed=0), gp.RescaleIntensity(["image", "seg"]),
    gp.HistogramStandardize(["image", "seg"]),
], ids=lambda t: type(t).__name__)
def test_every_intensity_transform_turns_an_int16_image_to_float_and_leaves_a_float_label_alone(transform):
    image = torch.from_numpy((_blob() * 1000).astype(np.int16))[None]
    float_label = torch.from_numpy(_labels()).float()[None]
    sample = gp.make_sample({"image": image, "seg": float_label}, labels="seg")
    out = transform(sample)
    assert out["image"].dtype == torch.float32
    assert torch.equal(out["seg"], float_label)
    # The same as on the image given as float32 from the start (nothing truncated to int16).
    as_float = transform(gp.make_sample({"image": image.float(), "seg": float_label}, labels="seg"))
    torch.testing.assert_close(out["image"], as_float["image"])


def test_kind_collates_decollates_and_survives_replay():
    samples = [gp.make_sample({"image": torch.rand(1, 6, 6, 6), "seg": torch.ones(1, 6, 6, 6)}, labels="seg")
               for _ in range(2)]
    batch = gp.collate(samples)
    assert batch["seg_meta"]["kind"] == ["label", "label"] and gp.is_label(batch, "seg")
    pipeline = gp.Compose([gp.RandAffine(["image", "seg"], rotate=30, seed=2), gp.ZNormalize("image")], seed=5)
    out = pipeline(batch)
    assert [gp.get_kind(s, "seg") for s in gp.decollate(out)] == ["label", "label"]
    replayed = gp.replay(samples[1], gp.get_history(gp.decollate(out)[1]))
    assert gp.get_kind(replayed, "seg") == "label"
    torch.testing.assert_close(replayed["seg"], gp.decollate(out)[1]["seg"])
    assert set(replayed["seg"].unique().tolist()) <= {0.0, 1.0}


def test_keys_made_by_transforms_get_their_kind():
    sample = gp.make_sample({"image": torch.from_numpy(_blob()).float()[None]})
    masked = gp.ForegroundMask("image", mask_key="brain", method=0.5)(sample)
    assert gp.get_kind(masked, "brain") == "label" and gp.get_kind(masked, "image") == "image"
    float_label = gp.make_sample({"seg": torch.from_numpy(_labels()).float()[None]}, labels="seg")
    synthetic = gp.RandLabelsToImage("seg", image_key="image", seed=0)(float_label)
    assert gp.get_kind(synthetic, "image") == "image" and gp.get_kind(synthetic, "seg") == "label"
    # A float label map (kind "label") is read as label values, like its integer twin.
    int_label = gp.make_sample({"seg": torch.from_numpy(_labels())[None]}, labels="seg")
    twin = gp.RandLabelsToImage("seg", image_key="image", seed=0)(int_label)
    torch.testing.assert_close(synthetic["image"], twin["image"])


def test_invert_follows_the_kind_of_the_key():
    label = torch.from_numpy(_labels()).float()[None]
    sample = gp.make_sample({"seg": label}, labels="seg")
    out = gp.Resample("seg", spacing=0.7)(sample)
    back = gp.invert(out, "seg")["seg"]  # a float label map: one-hot, not linear
    assert set(back.unique().tolist()) <= {0.0, 1.0, 7.0}
    assert (back == label).float().mean() > 0.95
    linear = gp.invert(out, "seg", kind="image")["seg"]
    assert len(linear.unique()) > 3



@pytest.mark.parametrize("step", [gp.Flip("image", axes=0), gp.Resample("image", spacing=0.7)],
                         ids=["flip", "resample"])
def test_invert_refuses_onehot_for_an_intensity_image(step):
    out = step(gp.make_sample({"image": torch.from_numpy(_blob()).float()[None]}))
    with pytest.raises(TransformError, match=r"^invert: mode='onehot' resamples label maps, .* \(kind='image'\)"):
        gp.invert(out, "image", mode="onehot")  # the key is declared an image
    with pytest.raises(TransformError, match=r"^invert: mode='onehot' resamples label maps"):
        gp.invert(out, "image", data=out["image"], mode="onehot", kind="image")
    prediction = (out["image"] > 0.5).float()  # given float data without a kind: one-hot says labels
    assert set(gp.invert(out, "image", data=prediction, mode="onehot")["image"].unique().tolist()) <= {0.0, 1.0}

def test_bundled_sample_and_phantom_declare_their_kinds():
    for sample in (gp.data.sample_brain(), gp.data.phantom(shape=(16, 16, 16), seed=0)):
        # Stored in the metadata (not left to the dtype rule), so it survives a cast to float.
        assert [sample[f"{k}_meta"]["kind"] for k in ("image", "label", "brain_mask")] == ["image", "label", "label"]
