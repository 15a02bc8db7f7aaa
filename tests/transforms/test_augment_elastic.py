"""RandElastic against an independent construction: explicit B-spline sums and scipy's map_coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError, TransformError
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
    coefficients = np.asarray(gp.get_history(out)[-1]["params"]["coefficients"])  # [3, n, n, n] mm
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
    coefficients = np.asarray(gp.get_history(moved)[-1]["params"]["coefficients"])
    assert np.all(coefficients[:, [0, 1, -2, -1]] == 0) and np.any(coefficients != 0)


def test_labels_keep_values_and_invert_refuses():
    sample = gp.data.phantom(shape=(16, 16, 16), seed=1)
    out = gp.RandElastic(["image", "label"], num_control_points=6, max_displacement=4.0, seed=3)(sample)
    assert out["label"].dtype == torch.uint8
    assert set(torch.unique(out["label"]).tolist()) <= set(torch.unique(sample["label"]).tolist())
    with pytest.raises(TransformError, match="RandElastic"):
        gp.invert(out, "label")


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
