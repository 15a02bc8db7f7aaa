"""gp.register (rigid and affine) on small volumes: known transforms recovered, batches, contrasts, inputs, errors."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.functional.resample import resample


def blob_head(shape=(40, 44, 36), seed=0):
    """A smooth, asymmetric 'head': ellipsoid shells and a few off-centre blobs (no symmetry to trap rotations)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt((grids[0] / 0.8) ** 2 + (grids[1] / 0.9) ** 2 + (grids[2] / 0.75) ** 2)
    image = np.where(radius < 0.9, 0.6, 0.0) + np.where(radius < 0.6, 0.3, 0.0)
    for _ in range(5):
        centre = rng.uniform(-0.5, 0.5, 3)
        image += 0.5 * np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / 0.02)
    texture = gaussian_filter(rng.normal(size=shape), 1.5)  # smooth "anatomy", so that MI has more than edges
    image += np.where(radius < 0.9, 0.5 * texture / texture.std(), 0.0)
    return np.clip(image, 0.0, None).astype(np.float32)


AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = [-40.0, -44.0, -36.0]


def known_transform(seed, model):
    """A fixed-to-moving world matrix: rotation up to 12 degrees, translation up to 6 mm (and scale for affine)."""
    rng = np.random.default_rng(seed)
    matrix = np.eye(4)
    linear = Rotation.from_euler("xyz", rng.uniform(-12, 12, 3), degrees=True).as_matrix()
    if model == "affine":
        linear = linear @ np.diag(rng.uniform(0.92, 1.08, 3))
    centre = AFFINE[:3, :3] @ (np.array([40, 44, 36]) - 1) / 2 + AFFINE[:3, 3]
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre + rng.uniform(-6, 6, 3) - linear @ centre
    return matrix


def moved(image, matrix):
    """The moving image: moving(y) = fixed(matrix^-1 y), on the same grid."""
    voxel_map = np.linalg.inv(AFFINE) @ np.linalg.inv(matrix) @ AFFINE
    return resample(torch.from_numpy(image)[None, None], voxel_map[None], image.shape, mode="linear")[0]


def worst_error_mm(found, truth, image):
    voxels = np.argwhere(image > 0.3)
    points = np.c_[voxels @ AFFINE[:3, :3].T + AFFINE[:3, 3], np.ones(len(voxels))]
    return np.linalg.norm(points @ (found - truth).T, axis=1).max()


@pytest.mark.parametrize(("model", "metric"), [("rigid", "mse"), ("rigid", "ncc"), ("rigid", "mi"), ("affine", "mi")])
def test_a_known_transform_is_recovered(model, metric):
    fixed = blob_head()
    truth = known_transform(1, model)
    moving = moved(fixed, truth)
    result = gp.register(torch.from_numpy(fixed)[None], moving, model=model, metric=metric,
                         fixed_affine=AFFINE, moving_affine=AFFINE, levels=2, iterations=(80, 60), points=20_000)
    assert result.matrix.shape == (4, 4) and result.model == model and result.metric == metric
    assert worst_error_mm(result.matrix, truth, fixed) < 0.5  # a quarter of a 2 mm voxel
    assert len(result.metric_history) == 2 and len(result.metric_history[1]) == 60
    coarse, fine = result.metric_history
    assert coarse[-1] < coarse[0] and fine[-1] <= fine[0] + 0.01 * abs(fine[0])  # better, then no worse
    assert result.seconds > 0


def test_another_contrast_registers_with_mutual_information():
    fixed = blob_head(seed=2)
    truth = known_transform(3, "rigid")
    inverted = np.where(fixed > 0, 2.5 - fixed, 0.0).astype(np.float32)  # another "modality"
    result = gp.register(torch.from_numpy(fixed)[None], moved(inverted, truth), model="rigid", metric="mi",
                         fixed_affine=AFFINE, moving_affine=AFFINE, levels=2, iterations=(80, 60), points=20_000)
    assert worst_error_mm(result.matrix, truth, fixed) < 0.6


def test_a_batch_registers_each_pair_like_alone():
    fixed = [blob_head(seed=s) for s in (4, 5)]
    truths = [known_transform(s, "rigid") for s in (6, 7)]
    moving = torch.stack([moved(f, t) for f, t in zip(fixed, truths)])
    fixed_batch = torch.from_numpy(np.stack(fixed))[:, None]
    options = dict(model="rigid", metric="ncc", fixed_affine=AFFINE, moving_affine=AFFINE, levels=2,
                   iterations=(40, 20), points=5_000)
    together = gp.register(fixed_batch, moving, **options)
    assert together.matrix.shape == (2, 4, 4)
    for index in range(2):
        alone = gp.register(fixed_batch[index], moving[index], **options)
        np.testing.assert_allclose(together.matrix[index], alone.matrix, atol=1e-4)


def test_samples_and_paths_are_accepted_and_the_centres_of_mass_start_far_moves(tmp_path):
    fixed = blob_head(seed=8)
    truth = np.eye(4)
    truth[:3, 3] = [14.0, -10.0, 8.0]  # beyond what the coarse level's gradients reach from the identity
    moving = moved(fixed, truth)
    fixed_sample = gp.make_sample({"image": torch.from_numpy(fixed)[None]}, affine=AFFINE)
    path = tmp_path / "moving.nii.gz"
    gp.write_image(path, moving, AFFINE)
    result = gp.register(fixed_sample, str(path), model="rigid", metric="ncc", levels=2, iterations=(60, 40),
                         points=20_000)
    assert worst_error_mm(result.matrix, truth, fixed) < 0.5
    np.testing.assert_allclose(result.fixed_affine, AFFINE)
    assert result.fixed_shape == fixed.shape


def test_a_mask_limits_the_compared_voxels():
    fixed = blob_head(seed=9)
    truth = known_transform(10, "rigid")
    moving = moved(fixed, truth)
    corrupted = fixed.copy()
    corrupted[:, :, :10] = 2.0  # a slab that is not in the moving image
    mask = np.ones_like(fixed, dtype=np.uint8)
    mask[:, :, :12] = 0
    result = gp.register(torch.from_numpy(corrupted)[None], moving, mask=torch.from_numpy(mask)[None],
                         model="rigid", metric="ncc", fixed_affine=AFFINE, moving_affine=AFFINE, levels=2,
                         iterations=(80, 60), points=20_000)
    assert worst_error_mm(result.matrix, truth, fixed) < 0.6


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"model": "similarity"}, "model must be one of"),
    ({"metric": "cc"}, "metric must be one of"),
    ({"levels": 2, "iterations": (10,)}, "one count per level"),
    ({"levels": 0}, "levels"),
])
def test_bad_arguments_are_refused(kwargs, match):
    image = torch.rand(1, 8, 8, 8)
    with pytest.raises(ConfigError, match=match):
        gp.register(image, image, **kwargs)


def test_inputs_must_be_single_channel_images():
    with pytest.raises(ConfigError, match="one channel"):
        gp.register(torch.rand(2, 8, 8, 8), torch.rand(2, 8, 8, 8))
    with pytest.raises(ConfigError, match="must be a path, a sample or a tensor"):
        gp.register([1, 2, 3], torch.rand(1, 8, 8, 8))


def smooth_field(shape, seed, max_voxels):
    """A smooth random displacement ``[1, 3, D, H, W]`` in voxels."""
    rng = np.random.default_rng(seed)
    field = np.stack([gaussian_filter(rng.normal(size=shape), 8.0) for _ in range(3)])
    return torch.from_numpy((field * max_voxels / np.abs(field).max()).astype(np.float32))[None]


def total_displacement_mm(matrix, displacement):
    """``M (x + d(x)) - x`` in mm at every voxel of the fixed grid (AFFINE)."""
    shape = displacement.shape[1:]
    voxels = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))
    affine = torch.from_numpy(AFFINE)
    world = torch.einsum("ij,j...->i...", affine[:3, :3], voxels) + affine[:3, 3, None, None, None]
    moved_points = world + displacement.double()
    matrix = torch.from_numpy(matrix)
    mapped = torch.einsum("ij,j...->i...", matrix[:3, :3], moved_points) + matrix[:3, 3, None, None, None]
    return (mapped - world).float()


def test_a_smooth_deformation_is_recovered_by_the_deformable_model_without_folding():
    from gpuprep.functional.jacobian import folding_fraction, jacobian_determinant
    from gpuprep.functional.velocity_field import compose_displacements, warp_volume
    from gpuprep.functional.warp import invert_displacement

    fixed = torch.from_numpy(blob_head(seed=11))[None, None]
    truth = smooth_field(fixed.shape[2:], 12, max_voxels=1.5)  # up to 3 mm
    moving = warp_volume(fixed, truth)  # moving(x) = fixed(x + truth(x))
    result = gp.register(fixed[0], moving[0], model="deformable", metric="mse", fixed_affine=AFFINE,
                         moving_affine=AFFINE, levels=2, iterations=(40, 20), points=20_000,
                         deformable_iterations=(60, 40), control_spacing=8.0)
    assert result.displacement.shape == (3, 40, 44, 36) and result.inverse_displacement.shape == (3, 40, 44, 36)
    assert len(result.metric_history) == 4  # two affine levels, then two deformable levels
    found = result.displacement[None] / 2.0  # mm -> voxels (2 mm axis-aligned grid)
    expected = invert_displacement(truth, iterations=20, stride=1)  # moving(x + d(x)) = fixed(x)
    total = total_displacement_mm(result.matrix, result.displacement)  # x -> M (x + d(x)), minus x
    inside = fixed[0, 0] > 0.3
    error = (total - 2.0 * expected[0]).norm(dim=0)[inside].mean()
    before = (2.0 * expected[0]).norm(dim=0)[inside].mean()
    assert error < 0.5 * before
    assert folding_fraction(jacobian_determinant(found)).item() == 0.0
    # the inverse undoes the forward field: x + d(x) + d_inv(x + d(x)) = x
    residual = compose_displacements(result.inverse_displacement[None] / 2.0, found).norm(dim=1)[0][inside]
    assert (residual * 2.0).mean() < 0.1


def test_a_batch_of_deformable_pairs_equals_each_alone():
    from gpuprep.functional.velocity_field import warp_volume

    fixed = torch.from_numpy(np.stack([blob_head(seed=13), blob_head(seed=14)]))[:, None]
    moving = torch.cat([warp_volume(fixed[i : i + 1], smooth_field(fixed.shape[2:], 15 + i, 1.0)) for i in range(2)])
    options = dict(model="deformable", metric="mse", fixed_affine=AFFINE, moving_affine=AFFINE, levels=1,
                   iterations=(10,), points=4_000, deformable_iterations=(10,))
    together = gp.register(fixed, moving, **options)
    assert together.displacement.shape == (2, 3, 40, 44, 36)
    for index in range(2):
        alone = gp.register(fixed[index], moving[index], **options)
        torch.testing.assert_close(together.displacement[index], alone.displacement, atol=2e-3, rtol=0)


def test_a_moving_scan_that_covers_part_of_the_fixed_one_registers_on_its_own_field_of_view():
    """A cropped moving scan (its own smaller grid) registers; points mapped outside it are left out of the metric."""
    fixed = blob_head(seed=21)
    truth = known_transform(22, "rigid")
    voxel_map = np.linalg.inv(AFFINE) @ np.linalg.inv(truth) @ AFFINE
    moved = resample(torch.from_numpy(fixed)[None, None], voxel_map[None], fixed.shape, mode="linear")[0]
    slab = moved[:, 8:32, 6:38, :]  # a cropped scan: its own grid, its own affine
    slab_affine = AFFINE.copy()
    slab_affine[:3, 3] += AFFINE[:3, :3] @ np.array([8.0, 6.0, 0.0])
    result = gp.register(torch.from_numpy(fixed)[None], slab, model="rigid", metric="mi", fixed_affine=AFFINE,
                         moving_affine=slab_affine, levels=2, iterations=(60, 40), points=20_000,
                         initial=np.eye(4))
    inside = np.argwhere(fixed > 0.3) @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    points = np.c_[inside, np.ones(len(inside))]
    assert np.linalg.norm(points @ (result.matrix - truth)[:3].T, axis=1).mean() < 0.5
