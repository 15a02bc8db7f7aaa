"""AnisotropicDiffusion against the NumPy Perona–Malik of tests/functional/test_diffusion.py, spacing per sample."""

from __future__ import annotations

import numpy as np
import torch

import gpuprep as gp
from gpuprep.transforms.denoise import AnisotropicDiffusion
from tests.functional.test_diffusion import _step, perona_malik


def test_transform_uses_each_samples_spacing(rng):
    """A batch mixing spacings; the transform reads them from the affines (1e-10, float64)."""
    spacings = [(1.0, 1.0, 1.0), (2.0, 0.7, 1.3)]
    images = [_step(rng)[1][None] for _ in spacings]
    batch = gp.collate(
        [gp.make_sample({"image": torch.from_numpy(im)}, affine=np.diag([*s, 1.0])) for im, s in zip(images, spacings)]
    )
    out = AnisotropicDiffusion("image", iterations=4, kappa=10.0, gamma=0.1, option="quadratic")(batch)
    for index, (image, spacing) in enumerate(zip(images, spacings)):
        reference = perona_malik(image[0], 4, 10.0, 0.1, "quadratic", spacing)
        np.testing.assert_allclose(out["image"][index, 0].numpy(), reference, rtol=0, atol=1e-10)
    params = [h[-1]["params"]["image"]["spacing"] for h in gp.get_history(out)]
    np.testing.assert_allclose(params, spacings, rtol=1e-12)
    unit = AnisotropicDiffusion("image", iterations=4, kappa=10.0, gamma=0.1, option="quadratic", use_spacing=False)
    np.testing.assert_allclose(
        unit(batch)["image"][1, 0].numpy(), perona_malik(images[1][0], 4, 10.0, 0.1, "quadratic"), atol=1e-10
    )
