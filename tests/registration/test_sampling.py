"""The fixed sample points of a registration level: enough useful ones for a cropped scan, the same in a batch."""

import numpy as np
import torch

from gpuprep.registration import sampling
from gpuprep.registration.sampling import MAX_DRAW_FACTOR, inside_moving, sample_fixed_points


def _level(batch=1, size=32):
    volume = torch.arange(size**3, dtype=torch.float32).reshape(1, 1, size, size, size).repeat(batch, 1, 1, 1, 1)
    return volume, np.broadcast_to(np.eye(4), (batch, 4, 4)).copy()


def _small_moving_box(shifts):
    """A moving grid of 17^3 voxels shifted by ``shifts`` (one per pair): it covers 1/8 of the fixed image."""
    to_voxel = torch.eye(4, dtype=torch.float64).repeat(len(shifts), 1, 1)
    to_voxel[:, :3, 3] = -torch.tensor(shifts, dtype=torch.float64)
    return inside_moving(torch.eye(4, dtype=torch.float64).expand(len(shifts), 4, 4), to_voxel, (17, 17, 17))


def test_a_moving_image_over_a_small_part_still_gets_the_requested_useful_points():
    maps_inside = _small_moving_box([[4.0, 4.0, 4.0]])
    points, values = sample_fixed_points(_level(), None, 500, 0, maps_inside)
    assert points.shape == (1, 500, 3)
    assert bool(maps_inside(points).all())
    # the values are the fixed image read at the points (the image is its voxel index, linear in each axis)
    voxel = points[0].numpy()
    expected = voxel[:, 0] * 32 * 32 + voxel[:, 1] * 32 + voxel[:, 2]
    np.testing.assert_allclose(values[0, 0].numpy(), expected, rtol=1e-5)


def test_a_plain_draw_would_have_left_few_useful_points():
    """The check above can fail: the same count drawn uniformly has about 1/8 of its points inside."""
    everywhere = inside_moving(torch.eye(4, dtype=torch.float64)[None], torch.eye(4, dtype=torch.float64)[None],
                               (32, 32, 32))
    points, _ = sample_fixed_points(_level(), None, 500, 0, everywhere)
    assert float(_small_moving_box([[4.0, 4.0, 4.0]])(points).float().mean()) < 0.2


def test_the_draw_stops_at_its_cap_when_nothing_maps_inside(monkeypatch):
    drawn = []
    real = sampling._candidates

    def counting(volume, affines, to_voxel, mask, count, *rest):
        drawn.append(count)
        return real(volume, affines, to_voxel, mask, count, *rest)

    monkeypatch.setattr(sampling, "_candidates", counting)
    nowhere = _small_moving_box([[1000.0, 0.0, 0.0]])
    points, _ = sample_fixed_points(_level(size=64), None, 100, 0, nowhere)
    assert points.shape == (1, 100, 3) and not bool(nowhere(points).any())
    assert sum(drawn) == MAX_DRAW_FACTOR * 100 and len(drawn) > 1


def test_a_pair_gets_the_same_points_in_a_batch_as_alone():
    shifts = [[4.0, 4.0, 4.0], [24.0, 2.0, 10.0]]  # the second covers 1/16: more rounds drawn
    together = sample_fixed_points(_level(batch=2), None, 300, 7, _small_moving_box(shifts))
    for index, shift in enumerate(shifts):
        alone = sample_fixed_points(_level(batch=1), None, 300, 7, _small_moving_box([shift]))
        torch.testing.assert_close(together[0][index], alone[0][0], rtol=0, atol=0)
        torch.testing.assert_close(together[1][index], alone[1][0], rtol=0, atol=0)


def test_points_outside_the_mask_weigh_nothing():
    volume, affines = _level()
    mask = torch.zeros(1, 1, 32, 32, 32)
    mask[..., :16] = 1
    everywhere = inside_moving(torch.eye(4, dtype=torch.float64)[None], torch.eye(4, dtype=torch.float64)[None],
                               (32, 32, 32))
    points, values = sample_fixed_points((volume, affines), (mask, affines), 400, 0, everywhere)
    in_mask = points[0, :, 2] <= 15.5  # the mask is read trilinearly, > 0.5
    assert bool(in_mask.all())  # enough candidates in the mask: only those are kept
    assert not bool(torch.isnan(values).any())
