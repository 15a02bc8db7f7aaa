"""N4 in torch: ITK's shrink grid, recovery of known fields, parity with SimpleITK, batch equals singles."""

import numpy as np
import pytest
import torch

from gpuprep.functional.n4 import N4Settings, n4_bias_field, shrink_starts

try:
    import SimpleITK as sitk
except ImportError:  # the GPU machine has no SimpleITK: the device tests still run there
    sitk = None
needs_simpleitk = pytest.mark.skipif(sitk is None, reason="needs SimpleITK, the reference")


def phantom(shape=(40, 44, 36), seed=0):
    """Three tissues in an ellipsoid 'head' with noise, a smooth known log field and the ellipsoid mask."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    tissue = np.select([radius < 0.35, radius < 0.6, radius < 0.85], [3.0, 2.0, 1.3], 0.0)
    tissue = tissue * (1.0 + 0.15 * (np.sin(7 * grids[0]) > 0.6))  # some structure inside each shell
    coefficients = rng.uniform(-0.25, 0.25, size=4)
    log_field = (coefficients[0] * grids[0] + coefficients[1] * grids[1] ** 2
                 + coefficients[2] * grids[0] * grids[2] + coefficients[3] * grids[2])
    image = 100.0 * tissue * np.exp(log_field) * (1.0 + 0.02 * rng.normal(size=shape))
    return image.astype(np.float32), radius < 0.85, log_field


def correlation(a, b, mask):
    return np.corrcoef(a[mask], b[mask])[0, 1]


@needs_simpleitk
@pytest.mark.parametrize("shape", [(197, 233, 189), (10, 11, 12), (7, 8, 9)])
@pytest.mark.parametrize("shrink", [2, 3, 4])
def test_shrunk_grid_is_itks(shape, shrink):
    index = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    shrunk = sitk.GetArrayFromImage(sitk.Shrink(sitk.GetImageFromArray(index), [shrink] * 3))
    starts, sizes = shrink_starts(shape, shrink)
    ours = index[tuple(slice(s, s + n * shrink, shrink) for s, n in zip(starts, sizes))]
    np.testing.assert_array_equal(ours, shrunk)


def simpleitk_log_field(image, mask, shrink, iterations, threshold=0.001, on=None):
    """SimpleITK's N4 on the shrunk image, its log field evaluated on ``on`` (default: the full image)."""
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations))
    corrector.SetConvergenceThreshold(threshold)
    full = sitk.GetImageFromArray(image)
    small = sitk.Shrink(full, [shrink] * 3)
    corrector.Execute(small, sitk.Shrink(sitk.GetImageFromArray(mask.astype(np.uint8)), [shrink] * 3))
    return sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(small if on == "shrunk" else full))


@needs_simpleitk
def test_the_first_iterations_equal_simpleitks_to_float_precision():
    image, mask, _ = phantom(seed=3)
    starts, sizes = shrink_starts(image.shape, 2)
    view = tuple(slice(s, s + n * 2, 2) for s, n in zip(starts, sizes))
    for iterations in [(1,), (5,), (3, 3)]:
        theirs = simpleitk_log_field(image, mask, 2, iterations, threshold=0.0, on="shrunk")
        settings = N4Settings(shrink=1, levels=len(iterations), iterations=iterations, convergence_threshold=0.0)
        ours = n4_bias_field(torch.from_numpy(image[view])[None], torch.from_numpy(mask[view])[None], settings)
        np.testing.assert_allclose(ours.log_field[0].numpy()[mask[view]], theirs[mask[view]], rtol=0, atol=1e-6)


@needs_simpleitk
@pytest.mark.parametrize("seed", [0, 2])
def test_a_known_field_is_recovered_as_well_as_by_simpleitk(device, seed):
    image, mask, log_field = phantom(seed=seed)
    result = n4_bias_field(torch.from_numpy(image)[None].to(device), torch.from_numpy(mask)[None].to(device),
                           N4Settings(shrink=2, levels=3))
    ours = result.log_field[0].cpu().numpy()
    theirs = simpleitk_log_field(image, mask, 2, (50, 50, 50))
    # Many iterations amplify float rounding (ITK works in float32 too), so the two may stop at
    # different iterations of the last level: close, not equal.
    assert correlation(ours, theirs, mask) > 0.98
    assert correlation(ours, log_field, mask) > correlation(theirs, log_field, mask) - 0.015
    assert result.iterations.shape == (1, 3) and (result.iterations >= 1).all()


def test_a_batch_equals_its_samples_one_by_one(device):
    samples = [phantom(seed=seed) for seed in (2, 3, 4)]
    images = torch.from_numpy(np.stack([s[0] for s in samples])).to(device)
    masks = torch.from_numpy(np.stack([s[1] for s in samples])).to(device)
    masks[1, :, :, :18] = False  # each sample its own mask
    settings = N4Settings(shrink=2, levels=2, iterations=(15, 25))
    together = n4_bias_field(images, masks, settings)
    for index in range(3):
        alone = n4_bias_field(images[index : index + 1], masks[index : index + 1], settings)
        torch.testing.assert_close(together.log_field[index : index + 1], alone.log_field, rtol=0, atol=1e-5)
        assert torch.equal(together.iterations[index], alone.iterations[0])


def test_the_device_gives_the_cpus_field(device):
    image, mask, _ = phantom(seed=7)
    settings = N4Settings(shrink=2, levels=2, iterations=(10, 10))
    on_cpu = n4_bias_field(torch.from_numpy(image)[None], torch.from_numpy(mask)[None], settings)
    on_device = n4_bias_field(torch.from_numpy(image)[None].to(device), torch.from_numpy(mask)[None].to(device),
                              settings)
    assert on_device.log_field.device.type == device.type
    torch.testing.assert_close(on_device.log_field.cpu(), on_cpu.log_field, rtol=0, atol=1e-4)


def test_an_empty_mask_gives_a_zero_field_and_non_positive_voxels_are_left_out():
    image, mask, _ = phantom(seed=5)
    images = torch.from_numpy(np.stack([image, image]))
    masks = torch.from_numpy(np.stack([np.zeros_like(mask), np.ones_like(mask)]))  # second: whole box
    result = n4_bias_field(images, masks, N4Settings(shrink=2, levels=2, iterations=5))
    assert torch.count_nonzero(result.log_field[0]) == 0
    assert torch.isnan(result.convergence[0]).all() and result.iterations[0].tolist() == [1, 1]
    inside_only = n4_bias_field(images[1:], torch.from_numpy(mask)[None], N4Settings(shrink=2, levels=2, iterations=5))
    # the box's zero background has no log: the whole box fits as its positive (the ellipsoid's) voxels do
    torch.testing.assert_close(result.log_field[1], inside_only.log_field[0], rtol=0, atol=1e-6)


def test_a_mask_with_no_voxel_on_the_shrunk_grid_gives_a_zero_field():
    image = torch.rand(1, 8, 8, 8) + 1.0
    mask = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    mask[0, 0, 0, 0] = True  # not on the grid shrunk by 4 (which starts at voxel 2)
    result = n4_bias_field(image, mask, N4Settings(shrink=4, levels=2))
    assert torch.count_nonzero(result.log_field) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to count host synchronisations")
def test_one_host_synchronisation_per_iteration_on_cuda():
    image, mask, _ = phantom(seed=6)
    images, masks = torch.from_numpy(image)[None].cuda(), torch.from_numpy(mask)[None].cuda()
    settings = N4Settings(shrink=2, levels=2, iterations=4, convergence_threshold=0.0)
    n4_bias_field(images, masks, settings)  # warm-up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as caught:
            n4_bias_field(images, masks, settings)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(caught) <= 8 + 2  # 8 iterations, plus the mask count and the result's copy
