"""GridPatches, PatchAggregator and sliding-window inference against MONAI; predictions mapped back."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference as monai_sliding_window
from monai.inferers.utils import _get_scan_interval

import gpuprep as gp
from gpuprep.data.grid_patches import GridPatches, PatchAggregator, importance_map
from gpuprep.data.sliding_window import predict_sample, sliding_window_inference
from gpuprep.errors import ConfigError, TransformError
from tests.conftest import oblique_affine

CASES = [  # (spatial shape, roi, overlap)
    ((19, 23, 17), (8, 10, 6), 0.25),  # nothing divides
    ((16, 16, 16), (8, 8, 8), 0.5),
    ((6, 20, 5), (8, 8, 8), 0.25),  # two axes smaller than the window: padded
    ((12, 9, 30), (12, 4, 7), (0.0, 0.5, 0.6)),  # per-axis overlap, one axis exactly one window
]


@pytest.mark.parametrize(("shape", "roi", "overlap"), CASES)
def test_grid_corners_are_monai_windows(shape, roi, overlap):
    grid = GridPatches(roi, overlap)
    padded = tuple(max(n, s) for n, s in zip(shape, roi))
    overlaps = overlap if isinstance(overlap, tuple) else (overlap,) * 3
    interval = _get_scan_interval(padded, roi, 3, overlaps)
    expected = [tuple(s.start for s in window) for window in dense_patch_slices(padded, roi, interval)]
    before = [b for b, _ in grid.padding(shape)]
    assert grid.intervals(shape) == interval
    assert [tuple(c + b for c, b in zip(corner, before)) for corner in grid.corners(shape)] == expected


def test_grid_extract_pads_like_torch(device):
    volume = torch.rand(2, 3, 5, 9, 4, device=device)
    grid = GridPatches((8, 4, 4), overlap=0.5, padding_mode="replicate")
    corners = grid.corners(volume.shape[-3:])
    assert corners[0] == (-1, 0, 0)  # 3 padded voxels: 1 before, 2 after
    patches = grid.extract(volume, corners)
    assert patches.shape == (2 * len(corners), 3, 8, 4, 4)
    padded = torch.nn.functional.pad(volume, (0, 0, 0, 0, 1, 2), mode="replicate")
    for index, corner in enumerate(corners * 2):
        j, k = corner[1], corner[2]
        assert torch.equal(patches[index], padded[index // len(corners), :, :, j:j + 4, k:k + 4])


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_aggregator_reproduces_an_identity_prediction(mode, device):
    volume = torch.rand(2, 7, 13, 6, device=device)
    grid = GridPatches((4, 5, 4), overlap=(0.5, 0.3, 0.0))
    corners = grid.corners(volume.shape[1:])
    aggregator = PatchAggregator(volume.shape[1:], mode=mode)
    aggregator.add(grid.extract(volume, corners), corners)
    torch.testing.assert_close(aggregator.result(), volume)
    partial = PatchAggregator(volume.shape[1:], mode=mode)
    partial.add(grid.extract(volume, corners[:1]), corners[:1])
    assert partial.result()[:, 4:].abs().max() == 0  # voxels no window covered are zero


def test_importance_map_is_monai_gaussian():
    from monai.data.utils import compute_importance_map

    for size, scale in (((8, 10, 6), 0.125), ((5, 7, 9), (0.2, 0.3, 0.5))):
        expected = compute_importance_map(size, mode="gaussian", sigma_scale=scale, device="cpu")
        assert torch.equal(importance_map(size, "gaussian", scale), expected)


class _Net(torch.nn.Module):
    def __init__(self, out_channels=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(2, out_channels, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.conv(x)) + x.mean(1, keepdim=True) ** 2


@pytest.mark.parametrize(("shape", "roi", "overlap"), CASES)
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_sliding_window_equals_monai(shape, roi, overlap, mode):
    inputs = torch.rand(2, 2, *shape, generator=torch.Generator().manual_seed(1))
    net = _Net().eval()
    with torch.no_grad():
        ours = sliding_window_inference(inputs, net, roi, sw_batch_size=3, overlap=overlap, mode=mode, cval=0.5)
        theirs = monai_sliding_window(inputs, roi, 3, net, overlap=overlap, mode=mode, cval=0.5)
    assert ours.shape == theirs.shape == (2, 3, *shape)
    torch.testing.assert_close(ours, theirs.as_tensor() if hasattr(theirs, "as_tensor") else theirs,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding_mode", ["replicate", "reflect"])
def test_sliding_window_padding_modes_equal_monai(padding_mode):
    inputs = torch.rand(1, 2, 6, 13, 5, generator=torch.Generator().manual_seed(2))

    def predictor(x):
        return torch.sin(3 * x) * x[:, :1]

    ours = sliding_window_inference(inputs, predictor, (8, 6, 8), sw_batch_size=2, padding_mode=padding_mode,
                                    sigma_scale=(0.1, 0.2, 0.3))
    theirs = monai_sliding_window(inputs, (8, 6, 8), 2, predictor, mode="gaussian", padding_mode=padding_mode,
                                  sigma_scale=(0.1, 0.2, 0.3))
    torch.testing.assert_close(ours, torch.as_tensor(theirs), rtol=1e-5, atol=1e-5)


def test_sliding_window_stays_on_the_device(forbid_host_sync, device):
    inputs = torch.rand(1, 2, 9, 10, 11, device=device)
    net = _Net().to(device).eval()
    forbid_host_sync()
    with torch.no_grad():
        out = sliding_window_inference(inputs, net, 6, overlap=0.5)
    assert out.device.type == device.type


def test_sliding_window_errors():
    inputs = torch.rand(1, 1, 8, 8, 8)
    with pytest.raises(TransformError, match=r"\[B, C, D, H, W\]"):
        sliding_window_inference(inputs[0], lambda x: x, 4)
    with pytest.raises(TransformError, match="predictor must return"):
        sliding_window_inference(inputs, lambda x: x[:, :, :2], 4)
    with pytest.raises(ConfigError, match="overlap"):
        sliding_window_inference(inputs, lambda x: x, 4, overlap=1.0)
    with pytest.raises(ConfigError, match="sw_batch_size"):
        sliding_window_inference(inputs, lambda x: x, 4, sw_batch_size=0)
    with pytest.raises(ConfigError, match="mode"):
        PatchAggregator((4, 4, 4), mode="mean")


def _threshold_net(threshold):
    def predictor(x):  # two-class scores: argmax is x > threshold
        return torch.cat([threshold - x, x - threshold], 1)
    return predictor


def _ellipsoid_nifti(tmp_path, shape=(30, 26, 22)):
    """An oblique, LPS-flipped scan with a bright ellipsoid, written by nibabel."""
    grid = np.indices(shape, dtype=np.float64)
    centre = np.array([14.2, 12.7, 10.4])[:, None, None, None]
    radii = np.array([9.0, 7.5, 6.0])[:, None, None, None]
    image = (1.0 - ((grid - centre) / radii) ** 2).sum(0).clip(0) ** 0.5 * 100 + 5
    affine = oblique_affine(spacing=(1.1, 0.9, 1.3))
    affine = affine @ np.diag([-1.0, -1.0, 1.0, 1.0])  # mirror two axes: an LPS-like voxel order
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), path)
    return path, image, affine


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_predict_sample_maps_back_to_the_original_scan(tmp_path):
    path, image, affine = _ellipsoid_nifti(tmp_path)
    pipeline = gp.Compose([gp.LoadImage("image", dtype="float32"), gp.Orientation("image", "RAS"),
                           gp.Resample("image", 1.5), gp.CropOrPad("image", (20, 20, 20))])
    sample = pipeline({"image": str(path)})
    assert sample["image"].shape[1:] != image.shape  # the prediction is made on another grid
    out = predict_sample(sample, _threshold_net(60.0), roi_size=(12, 12, 12), overlap=0.5, argmax=True)
    prediction = out["pred"]
    assert prediction.shape == (1, *image.shape) and prediction.dtype == torch.uint8
    np.testing.assert_allclose(gp.get_affine(out, "pred").numpy(), affine, atol=1e-5)
    np.testing.assert_allclose(nib.load(path).affine, affine, atol=1e-5)
    assert _dice(prediction[0].numpy() == 1, image > 60.0) >= 0.95
    assert torch.equal(out["image"], sample["image"])  # the preprocessed image is left as it was
    kept = predict_sample(sample, _threshold_net(60.0), roi_size=12, argmax=True, invert=False, output_key="seg")
    assert kept["seg"].shape == sample["image"].shape
    np.testing.assert_array_equal(gp.get_affine(kept, "seg"), gp.get_affine(sample, "image"))


def test_predict_sample_on_a_batch_equals_single_samples(tmp_path):
    path, image, _ = _ellipsoid_nifti(tmp_path)
    pipeline = gp.Compose([gp.LoadImage("image", dtype="float32"), gp.Orientation("image", "RAS"),
                           gp.Resample("image", 2.0), gp.CropOrPad("image", (16, 14, 12))])
    samples = [pipeline({"image": str(path)}), gp.Compose([gp.Flip("image", 0)])(pipeline({"image": str(path)}))]
    results = predict_sample(gp.collate(samples), _threshold_net(40.0), roi_size=8, sw_batch_size=3)
    assert isinstance(results, list) and len(results) == 2
    for result, sample in zip(results, samples):
        single = predict_sample(sample, _threshold_net(40.0), roi_size=8, sw_batch_size=3)
        torch.testing.assert_close(result["pred"], single["pred"])
        assert result["pred"].shape == (2, *image.shape)
    torch.testing.assert_close(results[0]["pred"], results[1]["pred"], atol=1e-4, rtol=0)  # flip undone
