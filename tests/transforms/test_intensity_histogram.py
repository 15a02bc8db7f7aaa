"""HistogramStandardize against TorchIO's HistogramStandardization (train and transform).

Tolerance: the only difference from TorchIO is the percentiles (histogram, within
``2 / 65536`` of each image's masked intensity range, vs ``np.percentile``). A landmark is
``100 * (p - p1) / (p99 - p1)`` averaged over images, so it may move by
``100 * 3 * (2 / 65536) * range / (p99 - p1)`` (three percentiles enter). An output voxel at
``x`` on a segment ``[a, b]`` whose ends move by ``d = (2 / 65536) * range`` moves by at most
``slope * d * (1 + 2 * |x - a| / (b - a))``: ``3 * slope * d`` inside the segment, more for voxels
extrapolated beyond the first or last landmark (the background of a masked image). Both bounds
are computed per case from NumPy's percentiles (1e-2 to 3e-2 on the 0..100 scale here; the
observed differences are 1e-3 to 2e-2).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError, TransformError
from gpuprep.functional.histogram_standardize import landmark_percentiles, uniform_landmarks
from gpuprep.transforms.intensity import HistogramStandardize, load_landmarks, save_landmarks

tio = pytest.importorskip("torchio")
BOUND = 2 / 65536
TIO_PERCENTILES = [1, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 99]
KEEP = [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12]  # TorchIO's range_to_use: its 13 values minus 25 and 75


def _head(seed: int, shape=(16, 18, 14)) -> tuple[np.ndarray, np.ndarray]:
    """An MRI-like image (three tissues, noise, a scale per seed, zero background) and its brain mask."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    tissue = np.select([radius < 0.35, radius < 0.6, radius < 0.85], [3.0, 2.0, 1.0], 0.0)
    image = (tissue * (40 + 15 * seed) + rng.normal(0, 6, size=shape)) * (tissue > 0)
    return image.astype(np.float32), (radius < 0.6).astype(np.uint8)


def _save(array: np.ndarray, path) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return str(path)


def _landmark_tolerance(arrays: list[np.ndarray]) -> float:
    ratios = []
    for values in arrays:
        p1, p99 = np.percentile(values, [1, 99])
        ratios.append(float(values.max() - values.min()) / (p99 - p1))
    return 100 * 3 * BOUND * max(ratios)


def _output_tolerance(values: np.ndarray, landmarks: np.ndarray, image: np.ndarray) -> float:
    """Bound on the output difference for ``image`` mapped with percentiles of ``values``."""
    source = np.percentile(values, landmark_percentiles())
    gaps = np.diff(source)
    slopes = np.diff(landmarks)[gaps > 1e-5] / gaps[gaps > 1e-5]
    below = (source[0] - image.min()) / gaps[0] if gaps[0] > 1e-5 else 0.0  # a flat end stays flat
    above = (image.max() - source[-1]) / gaps[-1] if gaps[-1] > 1e-5 else 0.0
    beyond = max(below, above, 0.0)
    shift = BOUND * float(values.max() - values.min())
    return float(slopes.max()) * shift * (3 + 2 * beyond) + 1e-4


@pytest.mark.parametrize("masked", [False, True])
def test_fit_and_transform_match_torchio(masked, tmp_path, device):
    heads = [_head(seed) for seed in range(3)]
    image_paths = [_save(image, tmp_path / f"t1_{i}.nii.gz") for i, (image, _) in enumerate(heads)]
    mask_paths = [_save(mask, tmp_path / f"brain_{i}.nii.gz") for i, (_, mask) in enumerate(heads)]
    reference = tio.HistogramStandardization.train(image_paths, mask_path=mask_paths if masked else None,
                                                   progress=False)
    # Tensors on the device, with masks, in one list; fit() gives the 11 landmarks TorchIO uses.
    images = [torch.from_numpy(image)[None].to(device) for image, _ in heads]
    masks = [torch.from_numpy(mask)[None].to(device) for _, mask in heads] if masked else None
    ours = HistogramStandardize.fit(images, mask=masks)
    selected = [image[mask > 0] if masked else image.ravel() for image, mask in heads]
    np.testing.assert_allclose(ours.numpy(), reference[KEEP], rtol=0, atol=_landmark_tolerance(selected))
    # Paths (read on the CPU) give the same landmarks as the tensors.
    from_paths = HistogramStandardize.fit(image_paths, mask=mask_paths if masked else None)
    same = 1e-9 if device.type == "cpu" else _landmark_tolerance(selected)  # float rounding differs on GPUs
    np.testing.assert_allclose(from_paths.numpy(), ours.numpy(), rtol=0, atol=same)

    # Transform a new image with TorchIO's 13-value landmarks (accepted as they are).
    image, brain = _head(5)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image)[None]),
                          brain=tio.LabelMap(tensor=torch.from_numpy(brain)[None]))
    transform_ref = tio.HistogramStandardization({"image": reference}, masking_method="brain" if masked else None)
    expected = transform_ref(subject)["image"].data
    sample = gp.make_sample({"image": torch.from_numpy(image)[None].to(device),
                             "brain": torch.from_numpy(brain)[None].to(device)})
    out = HistogramStandardize("image", landmarks={"image": reference}, mask="brain" if masked else None)(sample)
    values = image[brain > 0] if masked else image.ravel()
    atol = _output_tolerance(values, reference[KEEP], image)
    torch.testing.assert_close(out["image"].cpu(), expected, rtol=0, atol=atol)


def test_fit_accepts_samples_batches_and_nonzero():
    heads = [torch.from_numpy(_head(seed)[0])[None] for seed in range(4)]
    from_list = HistogramStandardize.fit(heads, mask="nonzero")
    from_batch = HistogramStandardize.fit(torch.stack(heads), mask="nonzero")
    samples = [gp.make_sample({"t1": h}) for h in heads]
    from_samples = HistogramStandardize.fit(samples, key="t1", mask="nonzero")
    from_collated = HistogramStandardize.fit(gp.collate(samples), key="t1", mask="nonzero")
    for other in (from_batch, from_samples, from_collated):
        torch.testing.assert_close(other, from_list, rtol=0, atol=1e-9)
    assert from_list[0].item() == pytest.approx(0, abs=1e-9) and from_list[-1].item() == pytest.approx(100)


def test_batch_equals_single_calls_and_replay(device):
    landmarks = HistogramStandardize.fit([torch.from_numpy(_head(s)[0])[None] for s in range(3)], mask="nonzero")
    transform = HistogramStandardize("image", landmarks=landmarks, mask="nonzero")
    samples = [gp.make_sample({"image": torch.from_numpy(_head(s)[0])[None].to(device)}) for s in (4, 5)]
    batch = transform(gp.collate(samples))
    for index, sample in enumerate(samples):
        single = transform(sample)
        torch.testing.assert_close(batch["image"][index], single["image"], rtol=0, atol=1e-5)
        assert torch.equal(gp.replay(sample, gp.get_history(single))["image"], single["image"])
        assert gp.get_history(single)[-1]["config"]["landmarks"]["image"] == pytest.approx(landmarks.tolist())


@pytest.mark.parametrize("suffix", [".json", ".npy", ".pth"])
def test_save_and_load_round_trip(suffix, tmp_path):
    landmarks = HistogramStandardize.fit([torch.from_numpy(_head(s)[0])[None] for s in range(2)])
    path = tmp_path / f"landmarks{suffix}"
    value = landmarks if suffix == ".npy" else {"t1": landmarks, "t2": landmarks * 0.5}
    HistogramStandardize.save_landmarks(value, path)
    loaded = HistogramStandardize.load_landmarks(path)
    loaded_t1 = loaded if suffix == ".npy" else loaded["t1"]
    torch.testing.assert_close(loaded_t1, landmarks, rtol=0, atol=0)
    keys = "t1" if suffix == ".npy" else ["t1", "t2"]
    sample = gp.make_sample({"t1": torch.from_numpy(_head(3)[0])[None], "t2": torch.from_numpy(_head(4)[0])[None]})
    from_file = HistogramStandardize(keys, landmarks=str(path))(sample)
    from_values = HistogramStandardize(keys, landmarks=value if suffix != ".npy" else {"t1": value})(sample)
    assert torch.equal(from_file["t1"], from_values["t1"])
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file


def test_torchio_files_load(tmp_path):
    """TorchIO's .npy (13 values) and .pth (dict of NumPy arrays) files are read."""
    images = [_save(_head(seed)[0], tmp_path / f"t1_{seed}.nii.gz") for seed in range(2)]
    tio.HistogramStandardization.train(images, output_path=tmp_path / "t1.npy", progress=False)
    torch.save({"t1": np.load(tmp_path / "t1.npy")}, tmp_path / "landmarks.pth")
    for path in (tmp_path / "t1.npy", tmp_path / "landmarks.pth"):
        transform = HistogramStandardize("t1", landmarks=str(path))
        assert transform.landmarks["t1"].shape == (11,)
        np.testing.assert_array_equal(transform.landmarks["t1"].numpy(), np.load(tmp_path / "t1.npy")[KEEP])


def test_json_records_settings_and_mismatch_is_an_error(tmp_path):
    path = save_landmarks({"image": uniform_landmarks()}, tmp_path / "l.json")
    document = json.loads(path.read_text())
    assert document["percentiles"] == landmark_percentiles() and document["cutoff"] == [0.01, 0.99]
    assert set(load_landmarks(path)) == {"image"}
    with pytest.raises(ConfigError, match="cutoff"):
        HistogramStandardize("image", landmarks=str(path), cutoff=(0.02, 0.98))


def test_default_landmarks_and_labels_untouched():
    """landmarks=None is TorchIO's transform with uniform landmarks (quartile slots unused by TorchIO)."""
    image, brain = _head(1)
    sample = gp.make_sample({"image": torch.from_numpy(image)[None], "brain": torch.from_numpy(brain)[None]})
    out = HistogramStandardize(["image", "brain"], mask="brain")(sample)
    assert torch.equal(out["brain"], sample["brain"])
    thirteen = np.interp(TIO_PERCENTILES, landmark_percentiles(), uniform_landmarks().numpy())
    subject = tio.Subject(image=tio.ScalarImage(tensor=sample["image"].clone()),
                          brain=tio.LabelMap(tensor=sample["brain"].clone()))
    expected = tio.HistogramStandardization({"image": thirteen}, masking_method="brain")(subject)["image"].data
    atol = _output_tolerance(image[brain > 0], uniform_landmarks().numpy(), image)
    torch.testing.assert_close(out["image"], expected, rtol=0, atol=atol)


def test_tied_background_percentiles_are_flat_like_torchio():
    """Unmasked: 1st and 10th percentiles are both 0 (a tie), with a few near-zero voxels in the
    same histogram bin; TorchIO's exact percentiles tie, ours must be treated as a tie too."""
    image, _ = _head(2)
    image.reshape(-1)[:3][image.reshape(-1)[:3] == 0] = 1e-3  # same bin as the zeros
    assert np.percentile(image, 10) == 0
    thirteen = np.interp(TIO_PERCENTILES, landmark_percentiles(), uniform_landmarks().numpy())
    tensor = torch.from_numpy(image)[None]
    expected = tio.HistogramStandardization({"image": thirteen})(tio.Subject(image=tio.ScalarImage(tensor=tensor)))
    out = HistogramStandardize("image")(gp.make_sample({"image": tensor}))
    atol = _output_tolerance(image.ravel(), uniform_landmarks().numpy(), image)
    torch.testing.assert_close(out["image"], expected["image"].data, rtol=0, atol=atol)


def test_empty_mask_leaves_the_sample_unchanged():
    sample = gp.make_sample({"image": torch.rand(1, 6, 6, 6), "none": torch.zeros(1, 6, 6, 6, dtype=torch.uint8)})
    assert torch.equal(HistogramStandardize("image", mask="none")(sample)["image"], sample["image"])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"landmarks": {"other": uniform_landmarks()}}, "no entry for key"),
    ({"landmarks": [1.0, 2.0, 3.0]}, "11 values"),
    ({"landmarks": torch.linspace(100, 0, 11)}, "non-decreasing"),
    ({"landmarks": "missing.json"}, "not found"),
    ({"landmarks": "landmarks.txt"}, "must end with"),
    ({"cutoff": (0.5, 0.4)}, "cutoff"),
    ({"cutoff": (0.0, 1.5)}, "cutoff"),
    ({"quantiles": (0.5, 0.995)}, "quantiles"),
    ({"quantiles": ()}, "quantiles"),
    ({"output_range": (100, 0)}, "output_range"),
    ({"epsilon": -1.0}, "epsilon"),
    ({"mask": 0}, "mask"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        HistogramStandardize("image", **kwargs)


def test_fit_errors():
    with pytest.raises(ConfigError, match="empty"):
        HistogramStandardize.fit([])
    with pytest.raises(ConfigError, match="masks"):
        HistogramStandardize.fit([torch.rand(1, 4, 4, 4)] * 2, mask=[torch.ones(1, 4, 4, 4)])
    with pytest.raises(TransformError, match="no voxel"):
        HistogramStandardize.fit([torch.zeros(1, 4, 4, 4)], mask="nonzero")
    with pytest.raises(ConfigError, match="key"):
        HistogramStandardize.fit([gp.make_sample({"image": torch.rand(1, 4, 4, 4)})], key="t1")
