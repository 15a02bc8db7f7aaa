"""RandElastic against an independent construction: explicit B-spline sums and scipy's map_coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError
from tests.conftest import oblique_affine


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    """The cubic B-spline kernel beta3, written out."""
    t = np.abs(t)
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def test_matches_explicit_bspline_field_and_map_coordinates():
    """Tolerance 1e-4 (float32 grid) away from the border."""
    shape = (14, 15, 13)
    affine = oblique_affine(spacing=(1.0, 1.2, 0.9))
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    volume = ndi.gaussian_filter(volume, 1.5)  # smooth, so linear interpolation is well conditioned
    sample = gp.make_sample({"image": torch.from_numpy(volume)[None]}, affine=affine)
    n_cp = 6
    out = gp.RandElastic("image", num_control_points=n_cp, max_displacement=3.0, locked_borders=1, seed=2)(sample)
    coefficients = np.asarray(gp.get_history(out)[-1]["params"]["draw"]["coefficients"])  # [3, n, n, n] mm
    # Dense displacement by explicit summation over control points (ITK layout: point k at (k - 1) * h).
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    field_mm = np.zeros((3, *shape))
    spacing = [(n - 1) / (n_cp - 3) for n in shape]
    for i in range(n_cp):
        wi = _cubic_bspline(grids[0] / spacing[0] + 1 - i)
        for j in range(n_cp):
            wj = _cubic_bspline(grids[1] / spacing[1] + 1 - j)
            for k in range(n_cp):
                weight = wi * wj * _cubic_bspline(grids[2] / spacing[2] + 1 - k)
                field_mm += coefficients[:, i, j, k, None, None, None] * weight
    field_voxels = np.einsum("vw,w...->v...", np.linalg.inv(affine[:3, :3]), field_mm)
    coordinates = np.stack(grids) + field_voxels
    reference = ndi.map_coordinates(volume.astype(np.float64), coordinates, order=1, mode="nearest")
    inside = np.all([(c >= 0) & (c <= n - 1) for c, n in zip(coordinates, shape)], axis=0)
    inside &= np.all([(g >= 2) & (g <= n - 3) for g, n in zip(grids, shape)], axis=0)
    assert inside.sum() > 500 and np.abs(field_voxels).max() > 0.5  # it really deforms
    np.testing.assert_allclose(out["image"][0].numpy()[inside], reference[inside], atol=1e-4)


def test_locked_borders_zero_displacement_zero_is_identity():
    sample = gp.data.phantom(shape=(16, 16, 16), seed=0)
    still = gp.RandElastic(["image", "label"], num_control_points=5, max_displacement=0.0, seed=0)(sample)
    torch.testing.assert_close(still["image"], sample["image"], rtol=0, atol=1e-5)
    assert torch.equal(still["label"], sample["label"])
    moved = gp.RandElastic("image", num_control_points=5, max_displacement=5.0, locked_borders=2, seed=0)(sample)
    coefficients = np.asarray(gp.get_history(moved)[-1]["params"]["draw"]["coefficients"])
    assert np.all(coefficients[:, [0, 1, -2, -1]] == 0) and np.any(coefficients != 0)


def test_labels_keep_values():
    sample = gp.data.phantom(shape=(16, 16, 16), seed=1)
    out = gp.RandElastic(["image", "label"], num_control_points=6, max_displacement=4.0, seed=3)(sample)
    assert out["label"].dtype == torch.uint8
    assert set(torch.unique(out["label"]).tolist()) <= set(torch.unique(sample["label"]).tolist())


def test_no_host_synchronisation_on_data(forbid_host_sync):
    batch = gp.collate([dict(gp.data.phantom(shape=(16, 16, 16), seed=i), sample_index=i) for i in range(3)])
    pipeline = gp.Compose([gp.RandElastic(["image", "label"], num_control_points=5, p=0.7)], seed=0)
    forbid_host_sync()
    assert pipeline(batch)["image"].shape[0] == 3


@pytest.mark.parametrize(
    "kwargs",
    [{"num_control_points": 4}, {"max_displacement": -1.0}, {"locked_borders": 3}, {"mode": "cubic"},
     {"padding_mode": "reflection"}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError, match="RandElastic"):
        gp.RandElastic("image", **kwargs)


def _explicit_field_voxels(coefficients_voxels: np.ndarray, shape, points: np.ndarray) -> np.ndarray:
    """B-spline displacement (voxels) at integer ``points`` [3, ...] of a grid of ``shape``, summed explicitly."""
    n_cp = coefficients_voxels.shape[1:]
    spacing = [(n - 1) / (m - 3) for n, m in zip(shape, n_cp)]
    field = np.zeros((3, *points.shape[1:]))
    for i in range(n_cp[0]):
        wi = _cubic_bspline(points[0] / spacing[0] + 1 - i)
        for j in range(n_cp[1]):
            wj = _cubic_bspline(points[1] / spacing[1] + 1 - j)
            for k in range(n_cp[2]):
                weight = wi * wj * _cubic_bspline(points[2] / spacing[2] + 1 - k)
                field += coefficients_voxels[:, i, j, k, None, None, None] * weight
    return field


def test_affine_elastic_crop_fuse_into_one_resampling_matching_scipy():
    """Fused output == scipy map_coordinates at pre @ (z + u(z)), z = crop(x), with u summed explicitly."""
    shape = (18, 17, 16)
    volume = ndi.gaussian_filter(np.random.default_rng(1).normal(size=shape), 1.5).astype(np.float32)
    sample = gp.make_sample({"image": torch.from_numpy(volume)[None]}, affine=oblique_affine())
    pipeline = gp.Compose([
        gp.RandAffine("image", rotate=10, scale=0.1, seed=0),
        gp.RandElastic("image", num_control_points=6, max_displacement=3.0, locked_borders=1, seed=1),
        gp.CropOrPad("image", (14, 15, 12)),
    ])
    assert len(pipeline._runs()) == 1
    out = pipeline(sample)
    affine_step, elastic_step, crop_step = (record["params"]["image"] for record in gp.get_history(out))
    out_points = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in (14, 15, 12)], indexing="ij"))
    crop = np.asarray(crop_step["voxel_map"])
    z = np.einsum("ij,j...->i...", crop[:3, :3], out_points) + crop[:3, 3, None, None, None]
    u = _explicit_field_voxels(np.asarray(elastic_step["displacement"]), shape, z)
    pre = np.asarray(affine_step["voxel_map"])
    source = np.einsum("ij,j...->i...", pre[:3, :3], z + u) + pre[:3, 3, None, None, None]
    reference = ndi.map_coordinates(volume.astype(np.float64), source, order=1, mode="nearest")
    inside = np.all([(c >= 0) & (c <= n - 1) for c, n in zip(source, shape)], axis=0)
    assert inside.mean() > 0.5 and np.abs(u).max() > 0.5
    np.testing.assert_allclose(out["image"][0].numpy()[inside], reference[inside], atol=2e-4)
    unfused = gp.Compose(pipeline.transforms, fuse=False)(sample)
    assert len(gp.get_history(unfused)) == 3
    interior = (slice(3, -3),) * 3
    np.testing.assert_allclose(out["image"][0].numpy()[interior], unfused["image"][0].numpy()[interior], atol=0.15)


def test_two_elastic_steps_make_two_resamplings():
    sample = gp.data.phantom(shape=(16, 16, 16), seed=2)
    steps = [gp.RandElastic("image", num_control_points=5, max_displacement=2.0, seed=s) for s in (0, 1)]
    steps.insert(1, gp.RandAffine("image", rotate=5, mode="cubic", seed=3))
    pipeline = gp.Compose(steps)
    assert [len(run) for run in pipeline._runs()] == [1, 1, 1]  # cubic and a second field do not join
    torch.testing.assert_close(pipeline(sample)["image"], gp.Compose(steps, fuse=False)(sample)["image"])


def _round_trip_dice(sample, transforms) -> list[float]:
    out = gp.Compose(transforms)(sample)
    assert not torch.equal(out["label"], sample["label"])
    back = gp.invert(out, "label")
    np.testing.assert_array_equal(back["label_meta"]["affine"].numpy(), gp.get_affine(sample, "label").numpy())
    scores = []
    for value in torch.unique(sample["label"]).tolist()[1:]:
        a, b = back["label"] == value, sample["label"] == value
        scores.append(float(2 * (a & b).sum() / (a.sum() + b.sum())))
    return scores


def test_invert_maps_elastic_and_affine_back():
    """Labels there and back lose no more than the rotation alone (an exactly invertible map) loses."""
    sample = gp.data.phantom(shape=(32, 32, 32), seed=4)
    keys = ["image", "label"]
    rotation = gp.RandAffine(keys, rotate=8, seed=0)
    elastic = gp.RandElastic(keys, num_control_points=6, max_displacement=4.0, seed=1)
    baseline = _round_trip_dice(sample, [rotation])
    warped = _round_trip_dice(sample, [rotation, elastic])
    assert all(w > b - 0.03 and w > 0.88 for w, b in zip(warped, baseline)), (warped, baseline)
    interior = (slice(None), *(slice(6, -6),) * 3)

    def image_error(transforms):  # the phantom's noise makes any linear round trip lose ~10 %
        back = gp.invert(gp.Compose(transforms)(sample), "image")["image"]
        return float((back - sample["image"])[interior].abs().mean() / sample["image"][interior].abs().mean())

    assert image_error([rotation, elastic]) < image_error([rotation]) + 0.02
