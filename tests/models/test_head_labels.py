"""Whole-head label maps from a scan and its brain mask (gpuprep.models.head_labels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from gpuprep.errors import TransformError
from gpuprep.models.head_labels import FIRST_NON_BRAIN_LABEL, kmeans_1d, whole_head_labels


def test_kmeans_finds_separated_clusters_and_is_a_fixed_point():
    generator = torch.Generator().manual_seed(0)
    truth = torch.tensor([1.0, 4.0, 9.0])
    values = torch.cat([m + 0.3 * torch.randn(4000, generator=generator) for m in truth])
    centres = kmeans_1d(values, 3)
    torch.testing.assert_close(centres, truth, rtol=0, atol=0.05)
    # Lloyd's fixed point: each centre is the mean of the values nearest to it (NumPy reference).
    v, c = values.numpy().astype(np.float64), centres.numpy().astype(np.float64)
    nearest = np.abs(v[:, None] - c[None]).argmin(1)
    np.testing.assert_allclose(c, [v[nearest == k].mean() for k in range(3)], rtol=0, atol=1e-4)


def test_kmeans_needs_enough_values():
    with pytest.raises(TransformError, match="at least k=3"):
        kmeans_1d(torch.tensor([1.0, 2.0]), 3)


def _phantom():
    """A 'head' (two layers around a three-tissue brain) on a 1 x 1 x 2 mm grid."""
    image = torch.zeros(1, 48, 48, 24)
    image[:, 2:46, 2:46, 1:23] = 0.2            # far layer
    image[:, 10:38, 10:38, 5:19] = 0.6          # near layer
    brain = torch.zeros(image.shape, dtype=torch.bool)
    brain[:, 16:32, 16:32, 8:16] = True
    generator = torch.Generator().manual_seed(1)
    tissue = torch.randint(0, 3, image.shape, generator=generator)
    noise = 0.005 * torch.randn(image.shape, generator=generator)
    image[brain] = (torch.tensor([0.8, 0.9, 1.0])[tissue] + noise)[brain]
    return image, brain, tissue


def test_brain_tissues_are_numbered_dark_to_bright_inside_the_mask_only():
    image, brain, tissue = _phantom()
    labels = whole_head_labels(image, brain, spacing=(1, 1, 2), intensity_classes=2, near_mm=6)
    assert labels.dtype == torch.uint8 and labels.shape == image.shape
    brain_labels = (labels >= 1) & (labels <= 3)
    assert torch.equal(brain_labels, brain)
    assert torch.equal(labels[brain].long(), tissue[brain] + 1)
    assert not labels[:, 0].any() and not labels[..., 0].any()  # air outside the head is background


def test_non_brain_classes_split_by_intensity_and_by_distance_to_the_brain():
    image, brain, _ = _phantom()
    spacing, near = (1.0, 1.0, 2.0), 6.0
    labels = whole_head_labels(image, brain, spacing=spacing, intensity_classes=2, near_mm=near)
    outside = (image > 0) & ~brain
    distance = torch.from_numpy(ndimage.distance_transform_edt(~brain[0].numpy(), sampling=spacing))[None]
    cluster = (image > 0.4).long()  # 0: the 0.2 layer, 1: the 0.6 layer
    expected = FIRST_NON_BRAIN_LABEL + 2 * cluster + (distance > near).long()
    assert torch.equal(labels[outside].long(), expected[outside])


def test_inputs_are_checked():
    image, brain, _ = _phantom()
    with pytest.raises(TransformError, match="brain mask is empty"):
        whole_head_labels(image, torch.zeros_like(brain), spacing=(1, 1, 1))
    with pytest.raises(TransformError, match=r"\[1, D, H, W\]"):
        whole_head_labels(image[0], brain[0], spacing=(1, 1, 1))
