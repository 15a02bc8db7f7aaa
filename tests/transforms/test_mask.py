"""ForegroundMask against a scipy/scikit-image pipeline, MaskImage (Otsu itself: tests/functional/test_threshold.py).

Tolerances: Otsu agrees with ``skimage.filters.threshold_otsu`` (nbins=256) within one bin width
(bin indices are computed in float32, so a voxel on a bin edge may be counted in the next bin);
the morphology is exact, so ForegroundMask must equal the reference mask voxel for voxel when
thresholded at the same value, and within the voxels lying between the two thresholds otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from skimage.filters import threshold_otsu
from skimage.morphology import ball

import gpuprep as gp
from gpuprep.errors import ConfigError, MissingKeyError, TransformError
from gpuprep.functional.threshold import otsu_threshold
from gpuprep.transforms.mask import ForegroundMask, MaskImage
from tests.functional.test_threshold import _head


def _reference_mask(image, threshold, largest=True, closing=0, fill=True) -> np.ndarray:
    mask = image > threshold
    if largest:
        labels, count = ndi.label(mask)
        if count:
            mask = labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])
    if closing:
        mask = ndi.binary_closing(np.pad(mask, closing), ball(closing))[(slice(closing, -closing),) * 3]
    if fill:
        mask = ndi.binary_fill_holes(mask)
    return mask


@pytest.mark.parametrize(("largest", "closing", "fill"), [(True, 0, True), (False, 0, True), (True, 2, True),
                                                          (True, 1, False), (False, 0, False)])
def test_foreground_mask_matches_reference_pipeline(largest, closing, fill, device):
    image = _head()
    sample = gp.make_sample({"image": torch.from_numpy(image)[None].to(device)}, affine=np.diag([2.0, 1, 1, 1]))
    sample["image_meta"]["filename"] = "head.nii.gz"
    transform = ForegroundMask("image", "head", fill_holes=fill, largest_component=largest, closing_radius=closing)
    out = transform(sample)
    mask = out["head"]
    assert mask.dtype == torch.uint8 and mask.shape == (1, *image.shape) and mask.device.type == device.type
    threshold = otsu_threshold(torch.from_numpy(image)[None, None].to(device)).item()  # same device, same bins
    reference = _reference_mask(image, threshold, largest, closing, fill)
    np.testing.assert_array_equal(mask[0].cpu().numpy().astype(bool), reference)
    # The threshold agrees with scikit-image's within one bin, and so does the mask up to those voxels.
    sk_threshold = threshold_otsu(image)
    between = (image > min(threshold, sk_threshold)) & (image <= max(threshold, sk_threshold))
    sk_reference = _reference_mask(image, sk_threshold, largest, closing, fill)
    assert (mask[0].cpu().numpy().astype(bool) != sk_reference).sum() <= between.sum()
    assert out["head_meta"]["filename"] == "head.nii.gz"
    assert torch.equal(out["head_meta"]["affine"], sample["image_meta"]["affine"])
    assert out["head_meta"]["affine"] is not out["image_meta"]["affine"]


def test_foreground_mask_removes_specks_and_fills_the_cavity():
    image = _head()
    out = ForegroundMask("image")(gp.make_sample({"image": torch.from_numpy(image)[None]}))["foreground"][0]
    assert out[1, 1, 1] == 0 and out[2, 15, 3] == 0  # specks dropped
    assert out[9, 10, 8] == 1  # the dark cavity in the middle filled
    assert ndi.label(out.numpy())[1] == 1


def test_fixed_threshold_and_multichannel():
    image = torch.from_numpy(_head())[None]
    two = torch.cat([image, torch.zeros_like(image)])  # foreground if any channel is above
    out = ForegroundMask("image", method=50.0)(gp.make_sample({"image": two}))
    np.testing.assert_array_equal(out["foreground"][0].numpy().astype(bool), _reference_mask(image[0].numpy(), 50.0))


def test_foreground_batch_equals_single_calls_and_replay():
    samples = [gp.make_sample({"image": torch.from_numpy(_head(seed) * (seed + 1))[None]}) for seed in range(3)]
    transform = ForegroundMask("image", closing_radius=1)
    batch = transform(gp.collate(samples))
    assert batch["foreground"].shape == (3, 1, 18, 20, 16)
    for index, sample in enumerate(samples):
        single = transform(sample)
        assert torch.equal(batch["foreground"][index], single["foreground"])
        assert torch.equal(gp.replay(sample, gp.get_history(single))["foreground"], single["foreground"])
        assert "foreground" not in sample and sample["history"] == []


def test_mask_image(device):
    image = torch.from_numpy(_head())[None].to(device)
    label = (image > 50).to(torch.uint8)
    sample = gp.make_sample({"image": image, "label": label})
    out = ForegroundMask("image")(sample)
    masked = MaskImage(["image", "label"], "foreground", fill=-1)(out)
    inside = out["foreground"].bool()
    assert torch.equal(masked["image"][inside], image[inside])
    assert (masked["image"][~inside] == -1).all()
    assert torch.equal(masked["label"], label)  # label maps are left alone
    assert torch.equal(sample["image"], image)


def test_mask_image_errors():
    sample = gp.make_sample({"image": torch.rand(1, 4, 4, 4), "small": torch.ones(1, 2, 2, 2)})
    with pytest.raises(MissingKeyError, match="brain"):
        MaskImage("image", "brain")(sample)
    with pytest.raises(TransformError, match="small"):
        MaskImage("image", "small")(sample)
    with pytest.raises(MissingKeyError, match="other"):
        ForegroundMask("other")(sample)
    assert "foreground" not in ForegroundMask("other", allow_missing_keys=True)(sample)


@pytest.mark.parametrize(("factory", "match"), [
    (lambda: ForegroundMask(["a", "b"]), "exactly one"),
    (lambda: ForegroundMask("image", mask_key="image"), "mask_key"),
    (lambda: ForegroundMask("image", mask_key=""), "mask_key"),
    (lambda: ForegroundMask("image", method="triangle"), "method"),
    (lambda: ForegroundMask("image", method=float("inf")), "method"),
    (lambda: ForegroundMask("image", method=True), "method"),
    (lambda: ForegroundMask("image", closing_radius=-1), "closing_radius"),
    (lambda: ForegroundMask("image", closing_radius=1.5), "closing_radius"),
    (lambda: ForegroundMask("image", fill_holes="yes"), "fill_holes"),
    (lambda: ForegroundMask("image", largest_component=None), "largest_component"),
    (lambda: MaskImage("image", mask_key=None), "mask_key"),
    (lambda: MaskImage("image", "brain", fill="zero"), "fill"),
])
def test_bad_arguments(factory, match):
    with pytest.raises(ConfigError, match=match):
        factory()
