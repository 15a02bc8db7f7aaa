"""RandAnisotropy against scipy's two-step zoom (nearest down, linear up)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_matches_scipy_zoom_down_then_up(axis):
    """Tolerance 1e-6 (float32); the factor avoids exact x.5 ties of the nearest step."""
    volume = np.random.default_rng(axis).normal(size=(17, 19, 21)).astype(np.float32)
    sample = gp.make_sample({"image": torch.from_numpy(volume)[None]})
    out = gp.RandAnisotropy("image", axes=axis, downsampling=(3.3, 3.3), seed=0)(sample)
    drawn = gp.get_history(out)[-1]["params"]
    assert drawn["axis"] == axis and drawn["factor"] == pytest.approx(3.3)
    n = volume.shape[axis]
    n_down = round(n / 3.3)
    zoom_down = [1.0] * 3
    zoom_down[axis] = n_down / n
    down = ndi.zoom(volume, zoom_down, order=0, grid_mode=True, mode="nearest")
    zoom_up = [1.0] * 3
    zoom_up[axis] = n / n_down
    reference = ndi.zoom(down, zoom_up, order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(out["image"][0].numpy(), reference, atol=1e-6)


def test_labels_untouched_and_batch_per_sample():
    labels = torch.randint(0, 3, (1, 12, 12, 12), dtype=torch.uint8)
    samples = [dict(gp.make_sample({"image": torch.rand(1, 12, 12, 12), "label": labels}), sample_index=i)
               for i in range(3)]
    transform = gp.RandAnisotropy(["image", "label"], seed=1)
    batch = transform(gp.collate(samples))
    assert torch.equal(batch["label"][0], labels)
    for index, sample in enumerate(samples):
        single = transform(sample)
        torch.testing.assert_close(batch["image"][index], single["image"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"axes": 3}, {"downsampling": 0.5}, {"downsampling": (3, 2)}])
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError, match="RandAnisotropy"):
        gp.RandAnisotropy("image", **kwargs)


def test_rand_swap_matches_torchio_swap_with_the_recorded_locations():
    import torchio as tio
    from torchio.transforms.augmentation.intensity.random_swap import Swap

    volume = torch.rand(1, 12, 10, 9, generator=torch.Generator().manual_seed(0))
    out = gp.RandSwap("image", patch_size=(3, 2, 4), num_iterations=20, seed=5)(gp.make_sample({"image": volume}))
    swaps = [tuple(tuple(corner) for corner in pair) for pair in gp.get_history(out)[-1]["params"]["swaps"]]
    assert all(first != second for first, second in swaps)
    reference = Swap(patch_size=(3, 2, 4), locations=swaps)(tio.ScalarImage(tensor=volume.clone()))
    assert torch.equal(out["image"], reference.data)


def test_rand_swap_rejects_patches_larger_than_the_image():
    with pytest.raises(ConfigError, match="patch_size"):
        gp.RandSwap("image", patch_size=20)(gp.make_sample({"image": torch.rand(1, 8, 8, 8)}))
