"""The run-wise max propagation against scipy.ndimage's 6-connected labelling."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from gpuprep.functional.propagate import propagate_max


def _domain(shape=(9, 11, 10), fraction=0.55, seed=0) -> np.ndarray:
    noise = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 1.0)
    return noise > np.quantile(noise, 1 - fraction)


def _component_max(values: np.ndarray, domain: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(domain)
    maxima = np.zeros(count + 1, dtype=values.dtype)
    np.maximum.at(maxima, labels.ravel(), values.ravel())
    return np.where(domain, maxima[labels], 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_component_gets_its_maximum(seed, device):
    domain = _domain(seed=seed)
    values = np.where(domain, np.random.default_rng(seed + 10).integers(0, 1000, domain.shape), 0)
    x, inside = (torch.from_numpy(a)[None, None].to(device) for a in (values, domain))
    out = propagate_max(x, inside)
    np.testing.assert_array_equal(out[0, 0].cpu().numpy(), _component_max(values, domain))


def test_flags_flood_their_components_and_batches_are_independent():
    domains = np.stack([_domain(seed=s) for s in (3, 4)])[:, None]
    seeds = np.zeros_like(domains)
    seeds[0, 0, 0, 0, 0] = domains[0, 0, 0, 0, 0]
    seeds[1, 0, 4, 5, 5] = domains[1, 0, 4, 5, 5]
    out = propagate_max(torch.from_numpy(seeds.copy()), torch.from_numpy(domains)).numpy()
    for b in range(2):
        np.testing.assert_array_equal(out[b, 0], _component_max(seeds[b, 0].astype(np.uint8), domains[b, 0]) > 0)


def test_pointer_labels_reach_the_same_fixed_point_on_a_winding_corridor():
    corridor = np.zeros((3, 15, 15), dtype=bool)
    for row in range(1, 14, 2):
        corridor[1, row, 1:14] = True
    for index, row in enumerate(range(2, 13, 2)):
        corridor[1, row, 13 if index % 2 == 0 else 1] = True
    n = corridor.size
    labels = np.where(corridor, n - np.arange(n).reshape(corridor.shape), 0)
    expected = _component_max(labels, corridor)
    domain = torch.from_numpy(corridor)[None, None]
    plain = propagate_max(torch.from_numpy(labels.copy())[None, None], domain)[0, 0].numpy()
    pointers = propagate_max(torch.from_numpy(labels.copy())[None, None], domain, pointers=True)[0, 0].numpy()
    np.testing.assert_array_equal(plain, expected)
    np.testing.assert_array_equal(pointers, expected)
    one_round = propagate_max(torch.from_numpy(labels.copy())[None, None], domain, max_rounds=1)[0, 0].numpy()
    assert (one_round <= expected).all() and (one_round != expected).any()  # a round turns one corner
