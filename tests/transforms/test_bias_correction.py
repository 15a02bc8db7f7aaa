"""BiasFieldCorrection: the functional N4 behind it, masks, spacing, channels, records and argument checks."""

import json

import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.functional.n4 import N4Settings, n4_bias_field
from gpuprep.functional.threshold import otsu_threshold
from tests.functional.test_n4 import phantom


def biased_sample(seed=0, spacing=1.0, dtype=np.float32):
    image, mask, log_field = phantom(shape=(32, 36, 28), seed=seed)
    sample = gp.make_sample({"image": torch.from_numpy(image.astype(dtype))[None],
                             "brain": torch.from_numpy(mask.astype(np.uint8))[None]},
                            labels=["brain"], affine=np.diag([spacing, spacing, spacing, 1.0]))
    return sample, mask, log_field


def test_the_transform_divides_by_the_functional_field_inside_the_given_mask():
    sample, mask, _ = biased_sample()
    out = gp.BiasFieldCorrection("image", mask_key="brain", shrink=2, levels=3, field_key="bias")(sample)
    expected = n4_bias_field(sample["image"], torch.from_numpy(mask)[None], N4Settings(shrink=2, levels=3))
    torch.testing.assert_close(out["bias"], expected.log_field.exp(), rtol=1e-6, atol=0)
    torch.testing.assert_close(out["image"], sample["image"] / expected.log_field.exp(), rtol=1e-6, atol=0)
    assert gp.get_kind(out, "bias") == "image" and torch.equal(gp.get_affine(out, "bias"), gp.get_affine(out, "image"))
    record = gp.get_history(out)[-1]["params"]["image"]
    assert record["control_points"] == [4, 4, 4]
    assert record["iterations"] == expected.iterations.tolist()
    assert json.loads(json.dumps(record)) == record


def test_the_default_mask_is_the_otsu_foreground():
    sample, _, _ = biased_sample(seed=1)
    foreground = sample["image"] > otsu_threshold(sample["image"][None], bins=256)
    expected = n4_bias_field(sample["image"], foreground, N4Settings(shrink=2, levels=2))
    out = gp.BiasFieldCorrection("image", shrink=2, levels=2)(sample)
    torch.testing.assert_close(out["image"], sample["image"] / expected.log_field.exp(), rtol=1e-6, atol=0)


def test_correction_lowers_the_spread_within_a_tissue_and_int16_becomes_float32():
    sample, mask, log_field = biased_sample(seed=2, dtype=np.int16)
    out = gp.BiasFieldCorrection("image", mask_key="brain", shrink=2, levels=3)(sample)
    assert out["image"].dtype == torch.float32
    before, after = sample["image"][0].numpy().astype(np.float64), out["image"][0].numpy()
    outer_shell = mask & (np.abs(before / np.exp(log_field) - 130.0) < 5.0)  # the 1.3 tissue, unbiased

    def variation(values):
        return values[outer_shell].std() / values[outer_shell].mean()

    assert variation(after) < 0.5 * variation(before)


def test_spline_distance_sets_the_control_points_from_the_extent_in_mm():
    sample, _, _ = biased_sample(spacing=2.0)  # extents 62, 70 and 54 mm
    out = gp.BiasFieldCorrection("image", shrink=2, levels=1, spline_distance=30.0)(sample)
    assert gp.get_history(out)[-1]["params"]["image"]["control_points"] == [3 + 3, 3 + 3, 2 + 3]


def test_samples_with_different_meshes_in_one_batch_equal_their_single_runs():
    samples = [biased_sample(seed=3, spacing=1.0)[0], biased_sample(seed=4, spacing=3.0)[0]]
    transform = gp.BiasFieldCorrection("image", mask_key="brain", shrink=2, levels=2, spline_distance=40.0)
    batch = transform(gp.collate(samples))
    for index, sample in enumerate(samples):
        single = transform(sample)
        torch.testing.assert_close(batch["image"][index], single["image"], rtol=0, atol=1e-5)
        assert gp.get_history(batch)[index] == gp.get_history(single)
    meshes = [h[-1]["params"]["image"]["control_points"] for h in gp.get_history(batch)]
    assert meshes[0] != meshes[1]


def test_each_channel_gets_its_own_field():
    first, _, _ = biased_sample(seed=5)
    second, _, _ = biased_sample(seed=6)
    both = gp.make_sample({"image": torch.cat([first["image"], second["image"]]), "brain": first["brain"]},
                          labels=["brain"])
    transform = gp.BiasFieldCorrection("image", mask_key="brain", shrink=2, levels=2)
    out = transform(both)
    for channel, sample in enumerate([first, second]):
        alone = transform({**sample, "brain": first["brain"]})
        torch.testing.assert_close(out["image"][channel], alone["image"][0], rtol=0, atol=1e-5)
    assert len(gp.get_history(out)[-1]["params"]["image"]["iterations"]) == 2


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"spline_distance": 100.0, "control_points": 5}, "spline_distance or control_points"),
    ({"control_points": 3}, "control_points"),
    ({"iterations": [10, 10]}, "one per level"),
    ({"shrink": 0}, "shrink"),
    ({"fwhm": 0.0}, "fwhm"),
    ({"spline_distance": -1.0}, "spline_distance"),
])
def test_bad_arguments_are_refused_by_name(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        gp.BiasFieldCorrection("image", **kwargs)


def test_a_field_key_needs_one_image_key():
    with pytest.raises(ConfigError, match="field_key needs exactly one key"):
        gp.BiasFieldCorrection(["t1", "t2"], field_key="bias")


def test_the_brain_mri_preset_corrects_first_and_keeps_the_field_aligned_with_the_image():
    from gpuprep.transforms.presets import brain_mri_preprocessing

    sample = gp.data.sample_brain()
    out = brain_mri_preprocessing(spacing=3.0, bias_field_key="bias")(sample)
    names = [record["name"] for record in gp.get_history(out)]
    assert names.index("BiasFieldCorrection") < names.index("RescaleIntensity")
    assert out["bias"].shape == out["image"].shape
    torch.testing.assert_close(gp.get_affine(out, "bias"), gp.get_affine(out, "image"))
    without = brain_mri_preprocessing(spacing=3.0, bias_correction=False)(sample)
    assert "BiasFieldCorrection" not in [record["name"] for record in gp.get_history(without)]
