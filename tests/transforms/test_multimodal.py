"""ConcatKeys against torch.cat (and MONAI's ConcatItemsd), its grid checks, kinds, dtypes and batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError, MissingKeyError, TransformError
from tests.conftest import oblique_affine


def _modalities(seed=0, shape=(9, 8, 7), affine=None) -> dict:
    generator = torch.Generator().manual_seed(seed)
    images = {name: torch.rand((1, *shape), generator=generator) for name in ("t1", "t2", "flair")}
    return gp.make_sample(images, affine=oblique_affine() if affine is None else affine)


def test_concat_keys_matches_torch_cat_and_monai():
    monai_transforms = pytest.importorskip("monai.transforms")
    sample = _modalities()
    out = gp.ConcatKeys(["t1", "t2", "flair"], "image")(sample)
    expected = torch.cat([sample["t1"], sample["t2"], sample["flair"]], dim=0)
    assert torch.equal(out["image"], expected)
    keys = ["t1", "t2", "flair"]
    monai = monai_transforms.ConcatItemsd(keys, "image", dim=0)({k: sample[k] for k in keys})
    assert torch.equal(out["image"], torch.as_tensor(monai["image"]))
    # Metadata: a copy of the first key's, never shared with it; sources kept; history recorded.
    np.testing.assert_array_equal(gp.get_affine(out, "image").numpy(), gp.get_affine(sample, "t1").numpy())
    assert gp.get_affine(out, "image") is not gp.get_affine(out, "t1")
    assert {"t1", "t2", "flair"} <= set(out)
    record = gp.get_history(out)[-1]
    assert record["name"] == "ConcatKeys" and record["params"] == {"channels": {"t1": 1, "t2": 1, "flair": 1}}


def test_concat_keys_delete_keys_and_replace_first_key():
    sample = _modalities()
    out = gp.ConcatKeys(["t1", "t2"], "t1", delete_keys=True)(sample)
    assert torch.equal(out["t1"], torch.cat([sample["t1"], sample["t2"]]))
    assert "t2" not in out and "t2_meta" not in out and "flair" in out
    assert sample["t1"].shape[0] == 1  # the input is not changed


def test_concat_keys_batch_equals_singles():
    samples = [_modalities(seed) for seed in range(3)]
    transform = gp.ConcatKeys(["flair", "t1"], "image")
    batch = transform(gp.collate(samples))
    for index, sample in enumerate(samples):
        single = transform(sample)
        assert torch.equal(batch["image"][index], single["image"])
        assert gp.get_history(batch)[index] == gp.get_history(single)


def test_concat_keys_shape_mismatch_names_both_keys_and_shapes():
    sample = _modalities()
    sample.update({k: v for k, v in _modalities(shape=(9, 8, 6)).items() if k in ("t2", "t2_meta")})
    with pytest.raises(TransformError, match=r"'t1' and 't2' are not on the same grid: spatial shapes \(9, 8, 7\) and "
                                             r"\(9, 8, 6\)"):
        gp.ConcatKeys(["t1", "t2"], "image")(sample)


def test_concat_keys_affine_mismatch_reports_the_distance_in_mm():
    sample = _modalities()
    shifted = oblique_affine()
    shifted[:3, 3] += [0.0, 0.3, 0.4]  # 0.5 mm off
    sample["t2_meta"] = {**sample["t2_meta"], "affine": torch.from_numpy(shifted)}
    with pytest.raises(TransformError, match=r"'t1' and 't2' are not on the same grid: .* up to 0\.5 mm apart"):
        gp.ConcatKeys(["t1", "t2"], "image")(sample)


def test_concat_keys_affine_mismatch_in_one_sample_of_a_batch_is_found():
    samples = [_modalities(seed) for seed in range(3)]
    flipped = oblique_affine() @ np.diag([1.0, 1.0, -1.0, 1.0])  # a flipped slice axis: corners far apart
    samples[2]["flair_meta"] = {**samples[2]["flair_meta"], "affine": torch.from_numpy(flipped)}
    with pytest.raises(TransformError, match=r"'t1' and 'flair' are not on the same grid.*\(sample 2;"):
        gp.ConcatKeys(["t1", "flair"], "image")(gp.collate(samples))


def test_concat_keys_tiny_affine_difference_within_tolerance_is_accepted():
    sample = _modalities()
    nudged = oblique_affine()
    nudged[:3, 3] += 1e-5  # float32 rounding in a NIfTI header, far below 1e-3 voxel
    sample["t2_meta"] = {**sample["t2_meta"], "affine": torch.from_numpy(nudged)}
    assert gp.ConcatKeys(["t1", "t2"], "image")(sample)["image"].shape[0] == 2


def test_concat_keys_image_with_label_is_refused_unless_asked():
    sample = gp.make_sample({"ct": torch.rand(1, 4, 4, 4), "seg": torch.ones(1, 4, 4, 4, dtype=torch.uint8)},
                            labels=["seg"])
    with pytest.raises(TransformError, match=r"different kinds \{'ct': 'image', 'seg': 'label'\}.*allow_mixed_kinds"):
        gp.ConcatKeys(["ct", "seg"], "stack")(sample)
    out = gp.ConcatKeys(["ct", "seg"], "stack", allow_mixed_kinds=True)(sample)
    assert out["stack"].dtype == torch.float32 and gp.get_kind(out, "stack") == "image"


@pytest.mark.parametrize(
    ("dtypes", "labels", "expected"),
    [
        ((torch.int16, torch.float32), [], torch.float32),  # int16 CT with float PET
        ((torch.float16, torch.float64), [], torch.float64),
        ((torch.uint8, torch.int16), ["a", "b"], torch.int16),  # two label maps stay integer
    ],
)
def test_concat_keys_dtype_is_torch_promotion(dtypes, labels, expected):
    images = {name: torch.ones(1, 3, 3, 3, dtype=dtype) for name, dtype in zip("ab", dtypes)}
    out = gp.ConcatKeys(["a", "b"], "stack")(gp.make_sample(images, labels=labels))
    assert out["stack"].dtype == expected == torch.promote_types(*dtypes)
    assert gp.get_kind(out, "stack") == ("label" if labels else "image")


def test_concat_keys_existing_output_key_is_not_overwritten():
    sample = _modalities()
    with pytest.raises(TransformError, match=r"output_key 'flair' already holds another image"):
        gp.ConcatKeys(["t1", "t2"], "flair")(sample)


def test_concat_keys_missing_key_is_named():
    sample = _modalities()
    with pytest.raises(MissingKeyError, match=r"\['pet'\] not found"):
        gp.ConcatKeys(["t1", "pet"], "image")(sample)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keys": ["t1", "t1"], "output_key": "x"}, r"keys must be distinct"),
        ({"keys": ["t1", "t2"], "output_key": ""}, r"output_key must be a non-empty string"),
        ({"keys": ["t1", "t2"], "output_key": "x", "delete_keys": "yes"}, r"delete_keys must be True or False"),
        ({"keys": ["t1", "t2"], "output_key": "x", "tolerance": 2}, r"tolerance must be a number in \[0, 1\)"),
    ],
)
def test_concat_keys_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=r"ConcatKeys: " + message):
        gp.ConcatKeys(**kwargs)


def test_concat_keys_does_not_sync_with_the_host(forbid_host_sync, device):
    sample = _modalities()
    sample = {**sample, **{k: sample[k].to(device) for k in ("t1", "t2", "flair")}}
    forbid_host_sync()
    out = gp.ConcatKeys(["t1", "t2", "flair"], "image")(sample)
    assert out["image"].device.type == device.type
