"""RegisterToReference: another modality onto a key or a template file, labels along, invert, fusion, replay."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.functional.resample import resample
from tests.registration.test_register import AFFINE, blob_head, known_transform


def two_modalities(seed=0):
    """A T1-like reference, and a T2-like image with a label map, moved by a known rigid transform."""
    t1 = blob_head(seed=seed)
    truth = known_transform(seed + 1, "rigid")
    t2_source = np.where(t1 > 0, 2.5 - t1, 0.0).astype(np.float32)
    labels_source = (gaussian_filter(t1, 2.0) > 0.7).astype(np.uint8)  # smooth regions, not speckle
    voxel_map = np.linalg.inv(AFFINE) @ np.linalg.inv(truth) @ AFFINE
    t2 = resample(torch.from_numpy(t2_source)[None, None], voxel_map[None], t1.shape, mode="linear")[0]
    labels = resample(torch.from_numpy(labels_source)[None, None], voxel_map[None], t1.shape, mode="nearest")[0]
    sample = gp.make_sample({"t1": torch.from_numpy(t1)[None], "t2": t2, "t2_labels": labels}, affine=AFFINE,
                            labels=["t2_labels"])
    return sample, truth, t2_source, labels_source


def correlation_with_ideal(registered, sample, truth):
    """Correlation, inside the head, with the moving image resampled through the true transform."""
    voxel_map = np.linalg.inv(AFFINE) @ truth @ AFFINE
    ideal = resample(sample["t2"][None], voxel_map[None], sample["t2"].shape[1:], mode="linear")[0]
    inside = sample["t1"][0] > 0.3
    return torch.corrcoef(torch.stack([registered[0][inside], ideal[0][inside]]))[0, 1]


def test_another_modality_is_registered_and_moved_with_its_labels():
    sample, truth, _t2_source, labels_source = two_modalities()
    step = gp.RegisterToReference(["t2", "t2_labels"], reference_key="t1", model="rigid", levels=2,
                                  iterations=[80, 60], points=20_000)
    out = step(sample)
    record = gp.get_history(out)[-1]
    found = np.array(record["params"]["registration"]["matrix"])
    centre = np.argwhere(sample["t1"][0].numpy() > 0.3) @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    points = np.c_[centre, np.ones(len(centre))]
    assert np.linalg.norm(points @ (found - truth)[:3].T, axis=1).max() < 0.6
    assert correlation_with_ideal(out["t2"], sample, truth) > 0.99
    assert out["t2_labels"].dtype == torch.uint8 and set(out["t2_labels"].unique().tolist()) <= {0, 1}
    agree = (out["t2_labels"][0] == torch.from_numpy(labels_source)).float().mean()
    assert agree > 0.99
    assert torch.equal(gp.get_affine(out, "t2"), gp.get_affine(out, "t1"))


def test_invert_resamples_back_through_the_inverse_of_the_recorded_matrix():
    sample, _, _, _ = two_modalities(seed=2)
    out = gp.RegisterToReference(["t2", "t2_labels"], reference_key="t1", model="rigid", levels=2,
                                 iterations=[60, 40], points=20_000)(sample)
    back = gp.invert(out, "t2_labels", mode="nearest")["t2_labels"]
    found = np.array(gp.get_history(out)[-1]["params"]["registration"]["matrix"])
    forward = np.linalg.inv(AFFINE) @ found @ AFFINE  # t1 voxel -> t2 voxel
    labels = sample["t2_labels"][None]
    there = resample(labels, forward[None], labels.shape[2:], mode="nearest")
    assert torch.equal(out["t2_labels"], there[0])
    expected = resample(there, np.linalg.inv(forward)[None], labels.shape[2:], mode="nearest")[0]
    assert torch.equal(back, expected)
    inside = torch.from_numpy(np.abs(sample["t1"][0].numpy()) > 0.9)  # away from the edges of the field of view
    assert (back[0][inside] == labels[0, 0][inside]).float().mean() > 0.98


def test_the_steps_after_it_fuse_with_it_and_replay_does_not_register_again(monkeypatch):
    import gpuprep.transforms.spatial.register as module

    sample, _, _, _ = two_modalities(seed=3)
    pipeline = gp.Compose([
        gp.RegisterToReference("t2", reference_key="t1", model="rigid", levels=1, iterations=[30], points=5_000),
        gp.Flip("t2", axes=0),
    ])
    out = pipeline(sample)
    history = gp.get_history(out)
    assert [r["name"] for r in history] == ["RegisterToReference", "Flip"]
    assert all("fused" in record for record in history)
    step_by_step = gp.Flip("t2", axes=0)(pipeline.transforms[0](sample))
    torch.testing.assert_close(out["t2"], step_by_step["t2"], atol=1e-4, rtol=0)

    def no_registration(*args, **kwargs):
        raise AssertionError("replay must reuse the recorded matrix")

    monkeypatch.setattr(module, "register", no_registration)
    replayed = gp.replay(sample, history)
    assert torch.equal(replayed["t2"], out["t2"])


def test_a_template_file_is_the_reference(tmp_path):
    sample, truth, _t2_source, _ = two_modalities(seed=4)
    template = tmp_path / "template.nii.gz"
    gp.write_image(template, sample["t1"], AFFINE)
    moving = {key: sample[key] for key in ("t2", "t2_meta", "history")}
    out = gp.RegisterToReference("t2", template=str(template), model="rigid", levels=2, iterations=[60, 40],
                                 points=20_000)(moving)
    assert correlation_with_ideal(out["t2"], sample, truth) > 0.99


@pytest.mark.parametrize(("kwargs", "match"), [
    ({}, "exactly one of reference_key and template"),
    ({"reference_key": "a", "template": "b.nii"}, "exactly one of reference_key and template"),
    ({"reference_key": "a", "model": "spline"}, "'rigid', 'affine' or 'deformable'"),
    ({"reference_key": "a", "model": "deformable", "mode": "cubic"}, "'linear' or 'nearest'"),
    ({"reference_key": "a", "model": "deformable", "control_spacing": 0}, "control_spacing must be a finite"),
    ({"reference_key": "a", "levels": 0}, "levels"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        gp.RegisterToReference("t2", **kwargs)


def test_apply_transform_replays_a_registration_saved_as_an_itk_file(tmp_path):
    from gpuprep.io.transform_files import write_affine

    sample, _, _, _ = two_modalities(seed=5)
    registered = gp.RegisterToReference(["t2", "t2_labels"], reference_key="t1", model="rigid", levels=1,
                                        iterations=[30], points=5_000)(sample)
    matrix = np.array(gp.get_history(registered)[-1]["params"]["registration"]["matrix"])
    for suffix in (".tfm", ".mat"):
        path = tmp_path / f"t2_to_t1{suffix}"
        write_affine(path, matrix)
        applied = gp.ApplyTransform(["t2", "t2_labels"], transform=str(path), reference_key="t1")(sample)
        torch.testing.assert_close(applied["t2"], registered["t2"], atol=1e-5, rtol=0)
        assert torch.equal(applied["t2_labels"], registered["t2_labels"])
    reference = tmp_path / "t1.nii.gz"
    gp.write_image(reference, sample["t1"], AFFINE)
    from_file = gp.ApplyTransform("t2", transform=matrix.tolist(), reference=str(reference))(sample)
    torch.testing.assert_close(from_file["t2"], registered["t2"], atol=1e-5, rtol=0)
    back = gp.invert(from_file, "t2")["t2"]
    assert back.shape == sample["t2"].shape


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"transform": np.eye(4).tolist()}, "exactly one of reference_key and reference"),
    ({"transform": [[1, 0], [0, 1]], "reference_key": "t1"}, "4x4 matrix"),
    ({"transform": [[1, 0, 0, 0]] * 4, "reference_key": "t1"}, "last row"),
])
def test_apply_transform_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        gp.ApplyTransform("t2", **kwargs)


def deformed_pair(seed=20):
    """The blob head, and a copy deformed by a smooth field (up to 3 mm) with a label map that moved with it."""
    from gpuprep.functional.velocity_field import warp_volume
    from tests.registration.test_register import smooth_field

    fixed = torch.from_numpy(blob_head(seed=seed))[None, None]
    truth = smooth_field(fixed.shape[2:], seed + 1, max_voxels=1.5)
    moving = warp_volume(fixed, truth)
    labels = warp_volume((fixed > 0.7).float(), truth, mode="nearest").to(torch.uint8)
    sample = gp.make_sample({"t1": fixed[0], "m": moving[0], "m_labels": labels[0]}, affine=AFFINE,
                            labels=["m_labels"])
    return sample


def _world_points(shape):
    """The world position (mm) ``[D, H, W, 3]`` of every voxel of an AFFINE grid."""
    voxels = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))
    return torch.einsum("ij,j...->...i", torch.from_numpy(AFFINE[:3, :3]), voxels) + torch.from_numpy(AFFINE[:3, 3])


OPTIONS = dict(model="deformable", metric="mse", levels=1, iterations=[10], points=4_000, deformable_iterations=[50],
               control_spacing=8.0)
DEFORMABLE = dict(reference_key="t1", **OPTIONS)


def test_a_deformable_registration_moves_keys_through_the_found_map_and_records_its_velocity():
    import json

    from gpuprep.functional.transform_models import sample_world

    sample = deformed_pair()
    out = gp.RegisterToReference(["m", "m_labels"], **DEFORMABLE)(sample)
    record = gp.get_history(out)[-1]
    assert "velocity" in record["params"]["m"] and json.dumps(record)  # a JSON history
    result = gp.register(sample["t1"], sample["m"], fixed_affine=AFFINE, moving_affine=AFFINE, **OPTIONS)
    # the output reads the moving image at M (x + d(x)) for every fixed-grid point x
    shape = sample["t1"].shape[1:]
    moved = _world_points(shape) + result.displacement.double().permute(1, 2, 3, 0)
    matrix = torch.from_numpy(result.matrix)
    points = (moved @ matrix[:3, :3].T + matrix[:3, 3]).reshape(1, -1, 3)
    expected = sample_world(sample["m"][None], torch.linalg.inv(torch.from_numpy(AFFINE))[None], points)
    torch.testing.assert_close(out["m"], expected.reshape(1, *shape).float(), atol=2e-3, rtol=0)
    # closer to the reference than before (the field's accuracy itself is tested in tests/registration)
    inside = sample["t1"][0] > 0.3
    before = (sample["m"][0] - sample["t1"][0])[inside].abs().mean()
    after = (out["m"][0] - sample["t1"][0])[inside].abs().mean()
    assert after < 0.98 * before
    reference_labels = sample["t1"][0] > 0.7
    agree_before = (sample["m_labels"][0] == reference_labels).float().mean()
    assert (out["m_labels"][0] == reference_labels).float().mean() > agree_before


def test_invert_maps_a_deformable_registration_back_and_replay_reuses_the_recorded_velocity(monkeypatch):
    import gpuprep.transforms.spatial.register as module

    sample = deformed_pair(seed=30)
    out = gp.RegisterToReference(["m", "m_labels"], **DEFORMABLE)(sample)
    back = gp.invert(out, "m_labels", mode="nearest")["m_labels"]
    inside = sample["t1"][0] > 0.1
    assert (back[0][inside] == sample["m_labels"][0][inside]).float().mean() > 0.98
    # the inverse reads the registered image at y + d_inv(y), y = M^-1 x, for every point x of the moving grid
    from gpuprep.functional.transform_models import sample_world

    result = gp.register(sample["t1"], sample["m"], fixed_affine=AFFINE, moving_affine=AFFINE, **OPTIONS)
    world = _world_points(sample["m"].shape[1:])
    matrix = torch.from_numpy(np.linalg.inv(result.matrix))
    inside_fixed = (world @ matrix[:3, :3].T + matrix[:3, 3]).reshape(1, -1, 3)
    to_voxel = torch.linalg.inv(torch.from_numpy(AFFINE))[None]
    inverse = sample_world(result.inverse_displacement[None].double(), to_voxel, inside_fixed, padding_mode="border")
    expected = sample_world(out["m"][None].double(), to_voxel, inside_fixed + inverse.transpose(1, 2))
    image_back = gp.invert(out, "m")["m"]
    torch.testing.assert_close(image_back, expected.reshape(image_back.shape).float(), atol=5e-3, rtol=0)

    def no_registration(*args, **kwargs):
        raise AssertionError("replay must reuse the recorded velocity")

    monkeypatch.setattr(module, "register", no_registration)
    replayed = gp.replay(sample, gp.get_history(out))
    torch.testing.assert_close(replayed["m"], out["m"], atol=1e-6, rtol=0)
    assert torch.equal(replayed["m_labels"], out["m_labels"])
