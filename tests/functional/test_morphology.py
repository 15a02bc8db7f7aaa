"""Binary morphology against scipy.ndimage and scikit-image: every result must be identical.

Structures: ``skimage.morphology.ball(r)`` for dilation/erosion/closing; scipy's default
(6-connectivity, ``generate_binary_structure(3, 1)``) for labelling and hole filling.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from skimage.morphology import ball as skimage_ball

from gpuprep.functional import morphology as M


def _blobs(shape=(16, 18, 14), fraction=0.45, sigma=1.5, seed=0) -> np.ndarray:
    noise = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return noise > np.quantile(noise, 1 - fraction)


def _largest_reference(mask: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    return labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])


def _t(mask: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask)).to(device)


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 4])
def test_ball_is_skimage_ball(radius):
    np.testing.assert_array_equal(M.ball(radius).numpy(), skimage_ball(radius).astype(bool))


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_dilation_erosion_closing_match_scipy(radius, device):
    structure = skimage_ball(radius).astype(bool)
    masks = np.stack([_blobs(seed=s) for s in range(3)])
    x = _t(masks, device)[:, None]  # [B, 1, D, H, W]
    results = {
        "dilation": M.binary_dilation(x, radius),
        "erosion": M.binary_erosion(x, radius),
        "erosion_border1": M.binary_erosion(x, radius, border_value=True),
        "closing_scipy": M.binary_closing(x, radius, pad=False),
        "closing_padded": M.binary_closing(x, radius),
    }
    for index, mask in enumerate(masks):
        padded = ndi.binary_closing(np.pad(mask, radius), structure)[(slice(radius, -radius),) * 3]
        references = {
            "dilation": ndi.binary_dilation(mask, structure),
            "erosion": ndi.binary_erosion(mask, structure),
            "erosion_border1": ndi.binary_erosion(mask, structure, border_value=1),
            "closing_scipy": ndi.binary_closing(mask, structure),
            "closing_padded": padded,
        }
        for name, result in results.items():
            assert result.device.type == device.type
            np.testing.assert_array_equal(result[index, 0].cpu().numpy(), references[name], err_msg=name)


def test_closing_keeps_objects_touching_the_border():
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[:6] = True  # a slab touching three faces
    closed = M.binary_closing(torch.from_numpy(mask)[None], 2)[0].numpy()
    np.testing.assert_array_equal(closed, mask)
    assert ndi.binary_closing(mask, skimage_ball(2)).sum() < mask.sum()  # scipy's default erodes it


@pytest.mark.usefixtures("flood_path")
@pytest.mark.parametrize(("fraction", "seed"), [(0.3, 0), (0.45, 0), (0.6, 1), (0.7, 1), (0.8, 0)])
def test_fill_holes_and_largest_component_match_scipy(fraction, seed, device):
    """Masks with 1 to 13 components and 1 to 32 hole voxels."""
    mask = _blobs(fraction=fraction, sigma=1.0, seed=seed)
    x = _t(mask, device)[None]
    np.testing.assert_array_equal(M.fill_holes(x)[0].cpu().numpy(), ndi.binary_fill_holes(mask))
    np.testing.assert_array_equal(M.largest_component(x)[0].cpu().numpy(), _largest_reference(mask))


def test_component_labels_partition_like_scipy(device):
    mask = _blobs(fraction=0.3, sigma=1.0, seed=1)  # 16 components
    ours = M.component_labels(_t(mask, device)[None])[0].cpu().numpy()
    reference, count = ndi.label(mask)
    assert len(np.unique(ours[mask])) == count
    # Same partition: each scipy component has exactly one of our labels and vice versa.
    pairs = np.unique(np.stack([reference[mask], ours[mask]]), axis=1)
    assert pairs.shape[1] == count
    assert (ours[~mask] == 0).all()


@pytest.mark.usefixtures("flood_path")
def test_nested_holes_and_islands(device):
    """A hollow shell holding an island, inside a hollow shell: both cavities filled."""
    mask = np.zeros((24, 24, 24), dtype=bool)
    mask[2:22, 2:22, 2:22] = True
    mask[4:20, 4:20, 4:20] = False
    mask[7:17, 7:17, 7:17] = True
    mask[9:15, 9:15, 9:15] = False
    mask[11:13, 11:13, 11:13] = True
    x = _t(mask, device)[None]
    np.testing.assert_array_equal(M.fill_holes(x)[0].cpu().numpy(), ndi.binary_fill_holes(mask))
    np.testing.assert_array_equal(M.largest_component(x)[0].cpu().numpy(), _largest_reference(mask))


@pytest.mark.usefixtures("flood_path")
def test_winding_path_needs_many_rounds(device):
    """A serpentine corridor (many turns) is still one component, and its dead end is a hole."""
    mask = np.zeros((3, 31, 31), dtype=bool)
    for row in range(0, 31, 2):
        mask[1, row, :] = True
    for index, row in enumerate(range(1, 30, 2)):
        mask[1, row, 30 if index % 2 == 0 else 0] = True
    walls = ~mask
    walls[0] = walls[2] = True
    walls[:, 0, :] = walls[:, -1, :] = walls[:, :, 0] = walls[:, :, -1] = True
    walls[1, 0, 1] = False  # the corridor opens to the border at one end only
    x = _t(mask, device)[None]
    np.testing.assert_array_equal(M.largest_component(x)[0].cpu().numpy(), _largest_reference(mask))
    np.testing.assert_array_equal(M.fill_holes(_t(walls, device)[None])[0].cpu().numpy(),
                                  ndi.binary_fill_holes(walls))


@pytest.mark.usefixtures("flood_path")
def test_ties_go_to_the_first_component_in_raster_order():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[6:9, 1:4, 1:4] = True  # 27 voxels, met second in raster order
    mask[1:4, 6:9, 6:9] = True  # 27 voxels, met first
    ours = M.largest_component(torch.from_numpy(mask)[None])[0].numpy()
    np.testing.assert_array_equal(ours, _largest_reference(mask))
    assert ours[2, 7, 7] and not ours[7, 2, 2]


@pytest.mark.usefixtures("flood_path")
def test_batched_and_channels_are_independent(device):
    masks = np.stack([_blobs(seed=s, fraction=f, sigma=1.0) for s, f in enumerate((0.3, 0.45, 0.7, 0.8))])
    masks = masks.reshape(2, 2, 16, 18, 14)
    x = _t(masks, device)
    filled, largest = M.fill_holes(x).cpu().numpy(), M.largest_component(x).cpu().numpy()
    for b in range(2):
        for c in range(2):
            np.testing.assert_array_equal(filled[b, c], ndi.binary_fill_holes(masks[b, c]))
            np.testing.assert_array_equal(largest[b, c], _largest_reference(masks[b, c]))


@pytest.mark.usefixtures("flood_path")
def test_empty_and_full_masks():
    empty = torch.zeros(2, 6, 7, 8, dtype=torch.bool)
    full = torch.ones(2, 6, 7, 8, dtype=torch.bool)
    assert not M.largest_component(empty).any() and not M.fill_holes(empty).any()
    assert M.largest_component(full).all() and M.fill_holes(full).all()
    assert M.binary_closing(full, 2).all() and not M.binary_dilation(empty, 2).any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="radius"):
        M.binary_dilation(torch.zeros(1, 4, 4, 4, dtype=torch.bool), -1)
    with pytest.raises(ValueError, match="radius"):
        M.ball(1.5)
    with pytest.raises(ValueError, match="D, H, W"):
        M.fill_holes(torch.zeros(4, 4, dtype=torch.bool))


def test_bounding_box_with_margin_clipped_to_the_volume():
    bounding_box = M.bounding_box
    mask = torch.zeros(10, 12, 8, dtype=torch.uint8)
    assert bounding_box(mask) is None
    mask[2:5, 0, 6] = 3
    mask[7, 4, 5] = 1
    assert bounding_box(mask) == (slice(2, 8), slice(0, 5), slice(5, 7))
    assert bounding_box(mask, margin=(1, 2, 3)) == (slice(1, 9), slice(0, 7), slice(2, 8))
    expected = np.argwhere(mask.numpy())
    box = bounding_box(mask.bool())
    assert [(b.start, b.stop) for b in box] == list(zip(expected.min(0).tolist(), (expected.max(0) + 1).tolist()))
    with pytest.raises(ValueError, match="margin must be a non-negative int"):
        bounding_box(mask, margin=-1)
    with pytest.raises(ValueError, match=r"one volume \[D, H, W\]"):
        bounding_box(mask[None])
