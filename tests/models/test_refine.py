"""refine_tissue_probabilities: Bayes' rule with Gaussian intensities, checked against numpy/scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.stats
import torch

from gpuprep.models.refine import refine_tissue_probabilities


def blurred_one_hot(labels: np.ndarray, classes: int, sigma: float) -> np.ndarray:
    """Soft priors that miss detail: the one-hot labels smoothed, normalised to sum to 1."""
    soft = np.stack([ndi.gaussian_filter((labels == k).astype(float), sigma) for k in range(classes)])
    return soft / soft.sum(0, keepdims=True)


def layered_phantom(shape=(24, 20, 20)) -> np.ndarray:
    """Background on slices 0-3, then thin alternating layers of tissues 1 and 2 along D."""
    labels = np.zeros(shape, dtype=np.int64)
    labels[4:] = 2
    labels[6::3] = 1  # one-voxel layers of tissue 1, two voxels of tissue 2 between them
    return labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def test_global_model_equals_bayes_rule_with_scipy_normals():
    rng = np.random.default_rng(0)
    labels = layered_phantom()
    image = np.choose(labels, [0.0, 40.0, 100.0]) + rng.normal(0, 6.0, labels.shape)
    prior = blurred_one_hot(labels, 3, 1.0)
    refined = refine_tissue_probabilities(torch.from_numpy(prior).float(), torch.from_numpy(image)[None].float(),
                                          (1, 2)).numpy()
    joint = []
    for k in (1, 2):
        mean = np.average(image, weights=prior[k])
        sd = np.sqrt(np.average((image - mean) ** 2, weights=prior[k]))
        joint.append(prior[k] * scipy.stats.norm.pdf(image, mean, sd))
    joint = np.stack(joint)
    expected = joint / joint.sum(0) * (1 - prior[0])
    np.testing.assert_allclose(refined[0], prior[0], rtol=1e-6)  # background keeps its probability
    np.testing.assert_allclose(refined[1:], expected, atol=2e-5)
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)


def test_thin_layers_lost_by_the_priors_come_back_from_the_intensities():
    rng = np.random.default_rng(1)
    labels = layered_phantom()
    image = np.choose(labels, [0.0, 40.0, 100.0]) + rng.normal(0, 6.0, labels.shape)
    prior = blurred_one_hot(labels, 3, 0.85)
    before = prior.argmax(0)
    after = refine_tissue_probabilities(torch.from_numpy(prior).float(), torch.from_numpy(image)[None].float(),
                                        (1, 2)).argmax(0).numpy()
    assert dice(before == 1, labels == 1) < 0.1  # the blurred priors miss the one-voxel layers ...
    assert dice(after == 1, labels == 1) > 0.9  # ... the image shows them
    assert dice(after == 2, labels == 2) > 0.95


def test_local_means_follow_a_bias_field_that_breaks_one_global_mean():
    rng = np.random.default_rng(2)
    labels = np.zeros((28, 20, 40), dtype=np.int64)
    labels[4:] = 2
    labels[4:8], labels[12:16], labels[20:24] = 1, 1, 1  # four-voxel slabs of tissue 1 and 2
    bias = np.linspace(0.3, 2.5, 40)[None, None, :]  # a strong multiplicative field along W
    image = np.choose(labels, [0.0, 40.0, 100.0]) * bias + rng.normal(0, 3.0, labels.shape)
    prior = blurred_one_hot(labels, 3, 1.5)
    prior[2] *= 4.0  # a network that leans to tissue 2 at every boundary
    prior = torch.from_numpy(prior / prior.sum(0)).float()
    x = torch.from_numpy(image)[None].float()
    before = dice(prior.argmax(0).numpy() == 1, labels == 1)
    global_fit = dice(refine_tissue_probabilities(prior, x, (1, 2)).argmax(0).numpy() == 1, labels == 1)
    local = refine_tissue_probabilities(prior, x, (1, 2), local_sigma=(4.0, 4.0, 4.0))
    local_fit = dice(local.argmax(0).numpy() == 1, labels == 1)
    assert local_fit > 0.85
    assert local_fit > before + 0.1 and local_fit > global_fit + 0.1


def test_local_mean_is_the_scipy_smoothed_weighted_mean_inside_the_tissue():
    labels = layered_phantom()
    image = np.choose(labels, [0.0, 40.0, 100.0]) * np.linspace(0.8, 1.2, 20)[None, None, :]
    prior = blurred_one_hot(labels, 3, 1.0)
    sigma = 3.0
    refined = refine_tissue_probabilities(torch.from_numpy(prior).float(), torch.from_numpy(image)[None].float(),
                                          (1, 2), local_sigma=(sigma,) * 3).numpy()
    # The same posterior from scipy's smoothing: mean_k = G(p_k x) / G(p_k) where the tissue is well present.
    joint = []
    for k in (1, 2):
        weight = prior[k]
        mean = ndi.gaussian_filter(weight * image, sigma, mode="constant") / ndi.gaussian_filter(weight, sigma,
                                                                                                mode="constant")
        sd = np.sqrt(np.average((image - mean) ** 2, weights=weight))
        joint.append(weight * scipy.stats.norm.pdf(image, mean, sd))
    expected = np.stack(joint) / np.stack(joint).sum(0) * (1 - prior[0])
    # Away from the edges, where the fallback to the global mean is negligible.
    core = (slice(8, 20), slice(5, 15), slice(5, 15))
    np.testing.assert_allclose(refined[(slice(1, 3), *core)], expected[(slice(None), *core)], atol=0.02)


def test_result_does_not_depend_on_the_intensity_scale():
    rng = np.random.default_rng(4)
    labels = layered_phantom()
    image = torch.from_numpy(np.choose(labels, [0.0, 40.0, 100.0]) + rng.normal(0, 8.0, labels.shape))[None].float()
    prior = torch.from_numpy(blurred_one_hot(labels, 3, 1.2)).float()
    for local in (None, (3.0, 3.0, 3.0)):
        reference = refine_tissue_probabilities(prior, image, (1, 2), local_sigma=local)
        scaled = refine_tissue_probabilities(prior, image * 0.01 + 7.0, (1, 2), local_sigma=local)
        torch.testing.assert_close(scaled, reference, atol=2e-4, rtol=0)


def test_constant_tissue_does_not_divide_by_zero():
    prior = torch.full((3, 6, 6, 6), 1 / 3)
    image = torch.zeros(1, 6, 6, 6)
    refined = refine_tissue_probabilities(prior, image, (1, 2))
    assert torch.isfinite(refined).all()
    torch.testing.assert_close(refined, prior)


def test_shapes_and_classes_are_checked():
    prior = torch.full((3, 6, 6, 6), 1 / 3)
    with pytest.raises(ValueError, match=r"share a grid, got \(3, 6, 6, 6\) and \(1, 6, 6, 5\)"):
        refine_tissue_probabilities(prior, torch.zeros(1, 6, 6, 5), (1, 2))
    with pytest.raises(ValueError, match=r"tissue_classes must index the 3 classes, got \[1, 3\]"):
        refine_tissue_probabilities(prior, torch.zeros(1, 6, 6, 6), (1, 3))
