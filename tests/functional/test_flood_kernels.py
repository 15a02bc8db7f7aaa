"""The numba run-labelling flood fills against scipy.ndimage and the torch path they replace on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

pytest.importorskip("numba")

from gpuprep.functional import flood as F
from gpuprep.functional import flood_kernels as K
from gpuprep.functional import morphology as M
from tests.functional.test_morphology import _largest_reference

# Odd sides, sides of 1 (thin slabs, rods, single voxels), rows shorter and longer than the
# 8-byte words the row scan reads, and shapes over MIN_SIZE (the torch path's block seeding).
SHAPES = [(1, 1, 1), (1, 1, 13), (1, 9, 1), (7, 1, 1), (1, 6, 7), (5, 1, 9), (3, 4, 8), (5, 7, 9),
          (6, 5, 17), (9, 8, 31), (17, 16, 19)]


def _masks(shape, count, seed):
    """``count`` random masks of ``shape``: blobs, noise and sparse dots, from empty to nearly full."""
    rng = np.random.default_rng(seed)
    masks = []
    for index in range(count):
        fraction = (0.0, 0.05, 0.3, 0.5, 0.7, 0.95, 1.0)[index % 7]
        noise = rng.normal(size=shape)
        if index % 2:
            noise = ndi.gaussian_filter(noise, 1.0)
        masks.append(noise >= np.quantile(noise, 1 - fraction) if 0 < fraction < 1 else np.full(shape, fraction > 0))
    return np.stack(masks)


def _torch_path(monkeypatch):
    monkeypatch.setattr(F, "_load_kernels", lambda: None)


def _flood_reference(seed, domain):
    labels, _ = ndi.label(domain)
    touched = np.unique(labels[seed & domain])
    return seed | np.isin(labels, touched[touched > 0])


@pytest.mark.parametrize("shape", SHAPES)
def test_fill_holes_and_largest_component_match_scipy_and_the_torch_path(shape, monkeypatch):
    masks = _masks(shape, 7, seed=sum(shape))
    x = torch.from_numpy(masks).reshape(7, 1, *shape)  # a batch with a channel
    filled, largest = K.fill_holes_cpu(x), K.largest_component_cpu(x)
    assert filled.shape == largest.shape == x.shape and filled.dtype == largest.dtype == torch.bool
    assert torch.equal(M.fill_holes(x), filled) and torch.equal(M.largest_component(x), largest)  # dispatched
    for index, mask in enumerate(masks):
        np.testing.assert_array_equal(filled[index, 0].numpy(), ndi.binary_fill_holes(mask))
        np.testing.assert_array_equal(largest[index, 0].numpy(), _largest_reference(mask))
    _torch_path(monkeypatch)
    assert torch.equal(M.fill_holes(x), filled) and torch.equal(M.largest_component(x), largest)


@pytest.mark.parametrize("shape", [(1, 1, 11), (4, 6, 9), (9, 8, 31), (18, 17, 16)])
def test_flood_matches_scipy_and_the_torch_path(shape, monkeypatch):
    domain = _masks(shape, 5, seed=3)
    rng = np.random.default_rng(4)
    seeds = domain & (rng.random(domain.shape) < 0.01)
    seeds[0] = False  # no seed: nothing reached
    expected = np.stack([_flood_reference(s, d) for s, d in zip(seeds, domain)])
    seed = torch.from_numpy(seeds.copy())
    reached = K.flood_cpu(seed, torch.from_numpy(domain))
    assert reached is seed  # filled in place
    np.testing.assert_array_equal(reached.numpy(), expected)
    assert torch.equal(F.flood(torch.from_numpy(seeds.copy()), torch.from_numpy(domain)), reached)
    _torch_path(monkeypatch)
    assert torch.equal(F.flood(torch.from_numpy(seeds.copy()), torch.from_numpy(domain)), reached)


def test_flood_of_a_non_contiguous_or_integer_seed_returns_a_new_tensor():
    domain = torch.ones(2, 3, 4, 5, dtype=torch.bool)
    seed = torch.zeros(5, 4, 3, 2, dtype=torch.bool).permute(3, 2, 1, 0)
    seed[1, 0, 0, 0] = True
    reached = K.flood_cpu(seed, domain)
    assert reached is not seed and reached[1].all() and not reached[0].any()
    assert int(seed.sum()) == 1
    assert K.flood_cpu(seed.to(torch.uint8), domain.to(torch.uint8)).equal(reached)


def test_long_corridor_and_checkerboard_rows():
    """A one-voxel corridor winding through every other row (hundreds of runs merged into one
    component), closed (a hole) or open at one end; and a checkerboard: each voxel a run and a component."""
    corridor = np.zeros((3, 41, 37), dtype=bool)
    corridor[1, 1:40:2, 1:36] = True
    corridor[1, 2:39:4, 35] = corridor[1, 4:39:4, 1] = True
    island = corridor.copy()
    island[1, 1, 1:20] = False  # cuts the corridor: two components
    walls, opened = ~corridor, ~corridor
    opened[1, 0, 1] = False
    checker = (np.indices((5, 6, 19)).sum(0) % 2).astype(bool)
    for mask in (corridor, island, walls, opened, checker, ~checker):
        x = torch.from_numpy(mask)
        np.testing.assert_array_equal(K.fill_holes_cpu(x).numpy(), ndi.binary_fill_holes(mask))
        np.testing.assert_array_equal(K.largest_component_cpu(x).numpy(), _largest_reference(mask))
    assert K.fill_holes_cpu(torch.from_numpy(walls)).all() and not K.fill_holes_cpu(torch.from_numpy(opened)).all()
    assert K.largest_component_cpu(torch.from_numpy(corridor)).equal(torch.from_numpy(corridor))


def test_masks_at_unaligned_addresses_and_of_other_dtypes():
    """The row scan reads eight bytes at a time at multiples of 8 from the start of the array, wherever it lies."""
    masks = _masks((5, 6, 13), 4, seed=9)
    buffer = torch.zeros(masks.size + 3, dtype=torch.bool)
    x = buffer[3:].view(4, 5, 6, 13)
    x.copy_(torch.from_numpy(masks))
    assert x.data_ptr() % 8 == 3
    for index, mask in enumerate(masks):
        np.testing.assert_array_equal(K.fill_holes_cpu(x)[index].numpy(), ndi.binary_fill_holes(mask))
        np.testing.assert_array_equal(K.largest_component_cpu(x * 7)[index].numpy(), _largest_reference(mask))


def test_empty_tensors_and_the_numpy_kernels():
    empty = torch.zeros(0, 4, 4, 4, dtype=torch.bool)
    assert K.fill_holes_cpu(empty).shape == (0, 4, 4, 4) and K.largest_component_cpu(empty).shape == (0, 4, 4, 4)
    flat = torch.zeros(2, 0, 3, 3, dtype=torch.bool)
    assert K.flood_cpu(flat, flat).numel() == 0
    mask = np.zeros((2, 3, 3, 3), np.uint8)
    mask[0, 1:] = 1
    mask[1, :, 1, 1] = 1
    out = np.full_like(mask, 5)
    K.largest_component_volumes(mask, out)
    np.testing.assert_array_equal(out, mask)
    K.fill_holes_volumes(mask, out)
    np.testing.assert_array_equal(out, mask)
    K.fill_holes_volumes(mask * 2, out)  # bytes other than 0/1: not background, and no endless loop
    np.testing.assert_array_equal(out, mask)
