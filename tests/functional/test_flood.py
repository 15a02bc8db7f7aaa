"""Seeded flood fills (fill_holes, largest_component on volumes of 16+ voxels a side) against scipy.ndimage.

The tests that fill run twice: by the numba kernels (CPU, where numba is installed) and by the
torch path (block seeds and graph), which CUDA and numba-less installs use.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import gpuprep as gp
import gpuprep.functional
from gpuprep.functional import flood as F
from gpuprep.functional import morphology as M
from gpuprep.functional.threshold import otsu_threshold
from gpuprep.models.mni import mni_t1
from tests.functional.test_morphology import _blobs, _largest_reference


@pytest.mark.usefixtures("flood_path")
@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75, 0.9])
def test_seeded_fill_holes_and_largest_component_on_odd_shaped_masks_match_scipy(fraction, device):
    """Sides not multiples of 2 at any level; 0.25 has no component over half the mask (full labelling)."""
    masks = np.stack([_blobs((37, 42, 33), fraction, sigma=1.2, seed=seed) for seed in range(4)])
    masks = masks.reshape(2, 2, 37, 42, 33)
    x = torch.from_numpy(masks).to(device)
    filled, largest = M.fill_holes(x).cpu().numpy(), M.largest_component(x).cpu().numpy()
    for b in range(2):
        for c in range(2):
            np.testing.assert_array_equal(filled[b, c], ndi.binary_fill_holes(masks[b, c]))
            np.testing.assert_array_equal(largest[b, c], _largest_reference(masks[b, c]))


@pytest.mark.usefixtures("flood_path")
def test_one_voxel_corridor_winding_through_a_large_grid_matches_scipy(device):
    """No 2x2x2 block fits in the corridor: the whole flood is done on the graph of its voxels."""
    corridor = np.zeros((17, 41, 41), dtype=bool)
    for row in range(1, 40, 2):
        corridor[8, row, 1:40] = True
    for index, row in enumerate(range(2, 39, 2)):
        corridor[8, row, 39 if index % 2 == 0 else 1] = True
    corridor[8, 0, 1] = True  # open to the border at one end
    walls = ~corridor
    island = corridor.copy()
    island[2:6, 2:6, 2:6] = True  # a second, smaller component
    np.testing.assert_array_equal(M.fill_holes(torch.from_numpy(walls).to(device)).cpu().numpy(),
                                  ndi.binary_fill_holes(walls))
    np.testing.assert_array_equal(M.largest_component(torch.from_numpy(island).to(device)).cpu().numpy(),
                                  _largest_reference(island))
    walls[8, 0, 1] = True  # closed: the whole corridor is a hole
    np.testing.assert_array_equal(M.fill_holes(torch.from_numpy(walls).to(device)).cpu().numpy(),
                                  ndi.binary_fill_holes(walls))


def test_foreground_mask_of_a_1mm_brain_matches_scipy_without_full_resolution_rounds(monkeypatch, flood_path):
    """The 1 mm MNI T1: exactly scipy's largest component and hole filling of the Otsu mask, and no
    propagation round over the whole 197 x 233 x 189 grid (they made ForegroundMask take 2-13 s);
    the numba kernels propagate nothing."""
    image, _ = mni_t1(1)
    image = image.reshape(1, *image.shape[-3:]).float()
    rounds = []
    propagate = M.propagate_max

    def counted(values, domain, **options):
        rounds.append(values[0].numel())
        return propagate(values, domain, **options)

    monkeypatch.setattr(M, "propagate_max", counted)
    monkeypatch.setattr(F, "propagate_max", counted)
    mask = gp.ForegroundMask("image")(gp.make_sample({"image": image}))["foreground"][0].numpy().astype(bool)
    assert max(rounds, default=0) < image.numel() // 64
    assert (flood_path == "compiled") == (not rounds)
    threshold = float(otsu_threshold(image[None], bins=256))
    np.testing.assert_array_equal(mask, ndi.binary_fill_holes(_largest_reference(image[0].numpy() > threshold)))


def test_block_all_and_upsample_on_odd_sides():
    mask = torch.from_numpy(_blobs((9, 6, 7), 0.8, sigma=1.2, seed=0))
    blocks = F.block_all(mask, 2, outside=True)
    padded = np.pad(mask.numpy(), ((0, 1), (0, 0), (0, 1)), constant_values=True)
    reference = padded.reshape(5, 2, 3, 2, 4, 2).all(axis=(1, 3, 5))
    np.testing.assert_array_equal(blocks.numpy(), reference)
    np.testing.assert_array_equal(F.upsample(blocks, (9, 6, 7)).numpy(),
                                  reference.repeat(2, 0).repeat(2, 1).repeat(2, 2)[:9, :6, :7])


def test_cpu_kernels_fall_back_to_torch_without_numba_and_on_other_devices(monkeypatch):
    assert F.cpu_kernels(torch.zeros(2, 2, 2, device="meta")) is None
    monkeypatch.setitem(sys.modules, "numba", None)  # ``import numba`` raises ImportError
    monkeypatch.delitem(sys.modules, "gpuprep.functional.flood_kernels", raising=False)
    monkeypatch.delattr(gpuprep.functional, "flood_kernels", raising=False)
    monkeypatch.setattr(F, "_load_kernels", F._load_kernels.__wrapped__)  # not the cached answer
    assert F.cpu_kernels(torch.zeros(2, 2, 2)) is None
    mask = torch.zeros(1, 18, 18, 18, dtype=torch.bool)
    mask[0, 2:16, 2:16, 2:16] = True
    mask[0, 5:9, 5:9, 5:9] = False
    mask[0, 0, 0, 0] = True
    assert int(M.fill_holes(mask).sum()) == 14**3 + 1 and int(M.largest_component(mask).sum()) == 14**3 - 4**3
