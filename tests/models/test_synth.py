"""Synthetic heads: shells nest, thicknesses against scipy's exact distance transform, world kept, seeds.

The distance transform itself: tests/functional/test_distance.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError, TransformError
from gpuprep.models.synth import (
    EXTRACEREBRAL_CSF,
    HEAD_LABELS,
    SCALP,
    SKULL,
    brain_mask_of,
    synthetic_head,
)
from tests.conftest import oblique_affine

RANGES = {"csf_mm": (1.5, 4.0), "skull_mm": (4.0, 8.0), "scalp_mm": (3.0, 8.0)}
#: Order of the layers from the inside out (brain = 1..3 together).
RANK = {0: 4, 1: 0, 2: 0, 3: 0, EXTRACEREBRAL_CSF: 1, SKULL: 2, SCALP: 3}


def _tissue(shape=(34, 30, 32), spacing=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """A small brain: WM ellipsoid in GM in a CSF rim, with a sulcus-like notch (labels 1..3)."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt((z / 13) ** 2 + (y / 11) ** 2 + (x / 12) ** 2)
    labels = np.zeros(shape, np.uint8)
    labels[r < 1.0] = 1
    labels[r < 0.9] = 2
    labels[r < 0.6] = 3
    labels[(np.abs(x) < 1.5) & (z > 5)] = 0  # a notch between the hemispheres
    return torch.from_numpy(labels)[None]


def _rank(labels: np.ndarray) -> np.ndarray:
    return np.vectorize(RANK.get)(labels)


def test_head_labels_and_brain_mask_of():
    assert dict(HEAD_LABELS) == {0: "background", 1: "csf", 2: "gm", 3: "wm", 4: "extracerebral_csf",
                                 5: "skull", 6: "scalp"}
    labels = torch.arange(7, dtype=torch.uint8)
    assert brain_mask_of(labels).tolist() == [0, 1, 1, 1, 0, 0, 0]


def test_shells_nest_and_have_their_thickness(device):
    spacing = (1.0, 1.0, 1.0)
    tissue = _tissue(spacing=spacing)
    labels, _ = synthetic_head(tissue.to(device), np.eye(4), seed=3, margin_mm=22.0, **RANGES)
    labels = labels[0].cpu().numpy()
    brain = (labels >= 1) & (labels <= 3)
    # Nesting: 6-neighbours are in the same layer or the next one in or out.
    rank = _rank(labels)
    for axis in range(3):
        step = np.abs(np.diff(rank, axis=axis))
        assert step.max() <= 1, f"layers skip one along axis {axis}"
    # Thickness of each shell: distances (scipy's exact EDT, the reference) from the layers inside it.
    tol = max(spacing)  # the shells are made of whole voxels
    inside = brain
    for (name, (low, high)), value in zip(RANGES.items(), (EXTRACEREBRAL_CSF, SKULL, SCALP)):
        distance = ndi.distance_transform_edt(~inside, sampling=spacing)
        shell = labels == value
        assert shell.any()
        assert distance[shell].max() <= high + tol, f"{name}: a voxel beyond the thickest allowed"
        # Everything outside the inner layers and closer than the thinnest allowed is this shell.
        near = (~inside) & (distance <= low - tol)
        assert shell[near].all(), f"{name}: a gap thinner than {low} mm"
        inside = inside | shell
    assert labels[0].max() == 0 and labels[:, 0].max() == 0  # the margin holds the whole head


def test_brain_labels_unchanged_and_world_coordinates_kept():
    tissue = _tissue(shape=(20, 18, 16), spacing=(1.2, 0.9, 2.5))
    affine = oblique_affine()
    labels, head_affine = synthetic_head(tissue, affine, seed=0, margin_mm=20.0)
    pad = np.ceil(20.0 / np.linalg.norm(affine[:3, :3], axis=0)).astype(int)
    assert labels.shape == (1, *(np.array(tissue.shape[1:]) + 2 * pad))
    assert labels.dtype == torch.uint8
    # Every voxel of the input keeps its world position: voxel i in the input is voxel i + pad now.
    ijk = np.array([[0, 0, 0, 1], [19, 17, 15, 1], [3, 11, 7, 1]], float).T
    shifted = ijk.copy()
    shifted[:3] += pad[:, None]
    np.testing.assert_allclose(head_affine @ shifted, affine @ ijk, atol=1e-9)
    inner = labels[0, pad[0]:-pad[0], pad[1]:-pad[1], pad[2]:-pad[2]]
    brain = brain_mask_of(tissue[0]).bool()
    assert torch.equal(inner[brain], tissue[0][brain])
    assert torch.equal(brain_mask_of(labels[0]).sum(), brain.sum())  # nothing added to the brain
    assert set(torch.unique(labels).tolist()) == {0, 1, 2, 3, 4, 5, 6}


def test_seeds_and_irregularity():
    tissue = _tissue()
    first, _ = synthetic_head(tissue, np.eye(4), seed=1)
    again, _ = synthetic_head(tissue, np.eye(4), seed=1)
    other, _ = synthetic_head(tissue, np.eye(4), seed=2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)

    def outer_distances(labels):
        labels = labels[0].numpy()
        head = labels > 0
        edge = head & ~ndi.binary_erosion(head, border_value=0)
        return ndi.distance_transform_edt(~brain_mask_of(torch.from_numpy(labels)).bool().numpy())[edge]

    # The head's outer surface lies at a varying distance from the brain, unless irregularity is 0.
    irregular = outer_distances(first)
    assert irregular.max() - irregular.min() > 3.0
    regular = outer_distances(synthetic_head(tissue, np.eye(4), seed=1, irregularity=0.0)[0])
    assert regular.max() - regular.min() < 2.0


def test_bundled_brain_synthetic_head_brain_mask_is_the_template_mask():
    # Speed is a benchmark's business, not a unit test's: a wall-clock bound failed on busy CPUs.
    sample = gp.data.sample_brain()
    affine = gp.get_affine(sample, "label").numpy()
    labels, head_affine = synthetic_head(sample["label"], affine, seed=5)
    pad = [(head_affine[i, 3] - affine[i, 3]) / -2.0 for i in range(3)]
    assert pad == [13.0, 13.0, 13.0]  # 25 mm at 2 mm, rounded up
    mask = torch.nn.functional.pad(sample["brain_mask"], (13,) * 6)
    assert torch.equal(brain_mask_of(labels), mask)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1},
        {"seed": 1.5},
        {"margin_mm": -1.0},
        {"csf_mm": (3.0, 1.0)},
        {"skull_mm": (0.0, 2.0)},
        {"scalp_mm": 5.0},
        {"irregularity": 1.5},
        {"control_mm": 0.0},
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        synthetic_head(_tissue(), np.eye(4), **{"seed": 0, **kwargs})


def test_bad_tissue():
    with pytest.raises(TransformError, match="tissue"):
        synthetic_head(_tissue()[0], np.eye(4), seed=0)
    with pytest.raises(TransformError, match="integer"):
        synthetic_head(_tissue().float(), np.eye(4), seed=0)
