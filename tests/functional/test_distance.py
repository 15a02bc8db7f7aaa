"""The exact Euclidean distance to a mask against scipy.ndimage.distance_transform_edt."""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import torch

from gpuprep.functional.distance import distance_to_mask


def test_distance_to_mask_equals_scipy_up_to_max():
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand((2, 20, 23, 17), generator=generator) > 0.997
    mask[1] = False
    mask[1, 10, 11, 8] = True
    spacing = (1.3, 0.8, 2.1)
    distance = distance_to_mask(mask, spacing, max_mm=9.0).numpy()
    for index in range(2):
        reference = ndi.distance_transform_edt(~mask[index].numpy(), sampling=spacing)
        near = reference <= 9.0
        np.testing.assert_allclose(distance[index][near], reference[near], rtol=1e-5, atol=1e-5)
        assert (distance[index][~near] > 9.0).all()
