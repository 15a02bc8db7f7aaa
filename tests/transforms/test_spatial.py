"""Spatial transforms against scipy, scikit-image, nibabel, TorchIO and MONAI."""

from __future__ import annotations

import nibabel as nib
import nibabel.processing as nip
import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError, TransformError
from tests.conftest import oblique_affine


def _smooth_volume(shape, seed=0) -> np.ndarray:
    """A smooth random field (low frequencies only), so interpolation errors stay small."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    out = np.zeros(shape)
    for _ in range(4):
        freq = rng.uniform(0.5, 2.0, 3)
        phase = rng.uniform(0, 2 * np.pi, 3)
        out += np.prod([np.sin(2 * np.pi * f * g + p) for f, g, p in zip(freq, grids, phase)], axis=0)
    return out.astype(np.float32)


def _sample(data: np.ndarray, affine: np.ndarray, labels: np.ndarray | None = None) -> dict:
    images = {"image": torch.from_numpy(np.ascontiguousarray(data))[None]}
    if labels is not None:
        images["label"] = torch.from_numpy(np.ascontiguousarray(labels))[None]
    return gp.make_sample(images, affine=affine)


def _interior(shape, margin=2) -> tuple[slice, ...]:
    return tuple(slice(margin, n - margin) for n in shape)


# -- Resample / Resize / ResampleToReference -------------------------------------------------


@pytest.mark.parametrize("affine", [np.diag([1.0, 1.2, 2.5, 1.0]), oblique_affine()], ids=["aniso", "oblique"])
def test_resample_agrees_with_nibabel_in_world(affine):
    """Values on our output grid equal nibabel.processing.resample_from_to onto that grid (tol 1e-4)."""
    data = _smooth_volume((20, 22, 12))
    out = gp.Resample("image", spacing=1.5, anti_aliasing=False)(_sample(data, affine))
    out_affine = gp.get_affine(out, "image").numpy()
    out_shape = out["image"].shape[1:]
    np.testing.assert_allclose(gp.data_spacing(out_affine) if hasattr(gp, "data_spacing") else
                               np.linalg.norm(out_affine[:3, :3], axis=0), [1.5, 1.5, 1.5], atol=1e-12)
    reference = nip.resample_from_to(nib.Nifti1Image(data, affine), (out_shape, out_affine), order=1)
    inside = _interior(out_shape)
    np.testing.assert_allclose(out["image"][0].numpy()[inside], reference.get_fdata()[inside], atol=1e-4)


def test_resample_keeps_world_position_of_a_blob():
    """Centre of mass of a blob in world mm moves by < 0.1 voxel after resampling."""
    affine = oblique_affine(spacing=(1.0, 1.3, 2.0))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (30, 28, 16)], indexing="ij"), -1)
    blob = np.exp(-np.sum((grid - [12.3, 15.1, 7.4]) ** 2 / [9.0, 6.0, 3.0], axis=-1)).astype(np.float32)
    out = gp.Resample("image", spacing=(1.5, 1.5, 1.5))(_sample(blob, affine))

    def world_centre(volume, affine):
        points = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), -1)
        centre = (points * volume[..., None]).sum((0, 1, 2)) / volume.sum()
        return affine[:3, :3] @ centre + affine[:3, 3]

    before = world_centre(blob, affine)
    after = world_centre(out["image"][0].numpy(), gp.get_affine(out, "image").numpy())
    assert np.linalg.norm(before - after) < 0.1 * 1.0


@pytest.mark.parametrize("order, mode", [(0, "nearest"), (1, "linear"), (3, "cubic")])
def test_resize_matches_skimage(order, mode):
    """skimage.transform.resize with anti-aliasing; tol 1e-5.

    skimage's mode='edge' is our border rule for nearest/linear; our cubic prefilter mirrors the
    signal (skimage 'reflect'), and the anti-aliasing then differs in the outer two voxels.
    """
    from skimage.transform import resize

    data = np.random.default_rng(1).normal(size=(16, 14, 12)).astype(np.float64)
    out_shape = (9, 20, 12)  # no output voxel falls on an exact x.5 tie, where nearest is a coin toss
    antialias = order == 1  # cubic: compared without anti-aliasing, whose border rules differ
    out = gp.Resize("image", out_shape, mode=mode, anti_aliasing=antialias)(_sample(data, np.eye(4)))
    reference = resize(data, out_shape, order=order, mode="reflect" if order == 3 else "edge",
                       anti_aliasing=antialias, clip=False)
    compare = (slice(None),) * 3
    np.testing.assert_allclose(out["image"][0].numpy()[compare], reference[compare], atol=1e-5)


def test_labels_are_nearest_and_keep_dtype_and_values():
    labels = np.random.default_rng(2).integers(0, 5, (12, 10, 8)).astype(np.int16)
    labels[labels == 3] = 7
    out = gp.Resample(["image", "label"], 0.7, mode="cubic")(
        _sample(np.zeros((12, 10, 8), np.float32), np.eye(4), labels=labels)
    )
    assert out["label"].dtype == torch.int16
    assert set(torch.unique(out["label"]).tolist()) <= set(np.unique(labels).tolist())


def test_resample_to_reference_matches_nibabel():
    moving_affine = oblique_affine(spacing=(2.0, 2.0, 3.0))
    data = _smooth_volume((12, 12, 8))
    reference_affine = np.diag([1.5, 1.5, 1.5, 1.0])
    reference_affine[:3, 3] = moving_affine[:3, 3] + [-3.0, 2.0, 1.0]
    sample = gp.make_sample(
        {"image": torch.zeros(1, 14, 15, 16), "t1": torch.from_numpy(data)[None]},
        affine={"image": reference_affine, "t1": moving_affine},
    )
    out = gp.ResampleToReference("t1", reference_key="image")(sample)
    assert torch.equal(gp.get_affine(out, "t1"), gp.get_affine(out, "image"))
    expected = nip.resample_from_to(nib.Nifti1Image(data, moving_affine), ((14, 15, 16), reference_affine), order=1)
    # Compare where the nibabel sample point lies inside the moving image (both fill 0 outside).
    mask = nip.resample_from_to(nib.Nifti1Image(np.ones_like(data), moving_affine), ((14, 15, 16), reference_affine),
                                order=0, cval=0).get_fdata() > 0
    np.testing.assert_allclose(out["t1"][0].numpy()[mask], expected.get_fdata()[mask], atol=1e-4)


# -- Crops, pads, flips, quarter turns ------------------------------------------------------


@pytest.mark.parametrize("target", [(8, 11, 6), (13, 9, 15), (10, 10, 10)])
def test_crop_or_pad_matches_torchio(target):
    import torchio as tio

    data = np.random.default_rng(3).normal(size=(10, 10, 10)).astype(np.float32)
    affine = oblique_affine()
    out = gp.CropOrPad("image", target)(_sample(data, affine))
    reference = tio.CropOrPad(target)(tio.ScalarImage(tensor=torch.from_numpy(data)[None], affine=affine))
    np.testing.assert_array_equal(out["image"].numpy(), reference.data.numpy())
    np.testing.assert_allclose(gp.get_affine(out, "image").numpy(), reference.affine, atol=1e-9)


def test_crop_or_pad_centres_on_a_mask():
    mask = torch.zeros(1, 20, 20, 20, dtype=torch.uint8)
    mask[0, 2:6, 10:14, 12:18] = 1
    sample = gp.make_sample({"image": torch.rand(1, 20, 20, 20), "mask": mask})
    out = gp.CropOrPad(["image", "mask"], (8, 8, 8), center="mask")(sample)
    inside = torch.nonzero(out["mask"][0]).float()
    np.testing.assert_allclose((inside.min(0).values + inside.max(0).values).numpy() / 2, [3.5, 3.5, 3.5], atol=0.5)
    # The image moved with the mask: same crop.
    assert torch.equal(out["image"][0][out["mask"][0].bool()], sample["image"][0][mask[0].bool()])


def test_crop_foreground_matches_monai():
    from monai.transforms import CropForegroundd

    data = np.zeros((1, 16, 18, 14), np.float32)
    data[0, 3:9, 5:7, 2:12] = np.random.default_rng(4).uniform(1, 2, (6, 2, 10))
    out = gp.CropForeground("image", source_key="image", margin=2)(_sample(data[0], np.eye(4)))
    reference = CropForegroundd(keys="image", source_key="image", margin=2, allow_smaller=True)({"image": data})
    np.testing.assert_array_equal(out["image"].numpy(), np.asarray(reference["image"]))


def test_pad_to_multiple_matches_monai():
    from monai.transforms import DivisiblePad

    data = np.random.default_rng(5).normal(size=(1, 13, 16, 7)).astype(np.float32)
    out = gp.PadToMultiple("image", 8)(_sample(data[0], np.eye(4)))
    reference = DivisiblePad(k=8, method="symmetric")(torch.from_numpy(data))
    np.testing.assert_array_equal(out["image"].numpy(), np.asarray(reference))


def test_pad_to_multiple_repeats_the_edge_like_monai_and_inverts():
    from monai.transforms import DivisiblePad

    data = np.random.default_rng(5).normal(size=(1, 13, 16, 7)).astype(np.float32)
    out = gp.PadToMultiple("image", 8, padding_mode="border")(_sample(data[0], oblique_affine()))
    reference = DivisiblePad(k=8, method="symmetric", mode="edge")(torch.from_numpy(data))
    np.testing.assert_array_equal(out["image"].numpy(), np.asarray(reference))
    np.testing.assert_array_equal(gp.invert(out, "image")["image"].numpy(), data)


@pytest.mark.parametrize("make", [
    lambda: gp.Orientation("image", "RAS"),
    lambda: gp.Flip("image", (0, 2)),
    lambda: gp.Rotate90("image", k=1, axes=(0, 1)),
    lambda: gp.RandFlip("image", axes=(0, 1), p=1.0, seed=3),
    lambda: gp.RandRotate90("image", max_k=3, axes=(1, 2), p=1.0, seed=3),
], ids=["Orientation", "Flip", "Rotate90", "RandFlip", "RandRotate90"])
def test_steps_that_only_move_voxels_keep_the_padding_of_the_next_step(make):
    """They never look outside their input: fused with PadToMultiple(border) the edge is repeated."""
    data = np.random.default_rng(8).normal(size=(9, 8, 7)).astype(np.float32) + 5
    sample = _sample(data, np.diag([-2.0, 2.0, 2.0, 1.0]))
    for padding in ("zeros", "border"):
        fused = gp.Compose([make(), gp.PadToMultiple("image", 4, padding_mode=padding)])(sample)
        apart = gp.PadToMultiple("image", 4, padding_mode=padding)(make()(sample))
        torch.testing.assert_close(fused["image"], apart["image"], rtol=0, atol=0)
    zeros = gp.PadToMultiple("image", 4)(make()(sample))
    assert not torch.allclose(fused["image"], zeros["image"])  # the two paddings differ on this grid


@pytest.mark.parametrize("axes", [0, (1, 2), (0, 1, 2)])
def test_flip_matches_numpy_and_keeps_world(axes):
    data = np.random.default_rng(6).normal(size=(5, 6, 7)).astype(np.float32)
    affine = oblique_affine()
    out = gp.Flip("image", axes)(_sample(data, affine))
    np.testing.assert_array_equal(out["image"][0].numpy(), np.flip(data, axes))
    _assert_world_kept(data, affine, out)


@pytest.mark.parametrize("k, axes", [(1, (0, 1)), (2, (1, 2)), (3, (0, 2)), (-1, (2, 0))])
def test_rotate90_matches_numpy_and_keeps_world(k, axes):
    data = np.random.default_rng(7).normal(size=(5, 6, 7)).astype(np.float32)
    affine = oblique_affine()
    out = gp.Rotate90("image", k, axes)(_sample(data, affine))
    np.testing.assert_array_equal(out["image"][0].numpy(), np.rot90(data, k, axes))
    _assert_world_kept(data, affine, out)


def _assert_world_kept(data, affine, out):
    """Every output voxel sits, in world mm, where the input voxel with the same value sat."""
    out_data = out["image"][0].numpy()
    out_affine = gp.get_affine(out, "image").numpy()
    for index in [(0, 0, 0), (1, 2, 3), tuple(n - 1 for n in out_data.shape)]:
        world = out_affine @ np.array([*index, 1.0])
        source = np.round(np.linalg.solve(affine, world)[:3]).astype(int)
        assert out_data[index] == data[tuple(source)]


# -- Fusion and inversion ----------------------------------------------------------------


def _labelled_head(shape=(40, 44, 36)) -> tuple[np.ndarray, np.ndarray]:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    radius = np.sqrt((grid**2 / [0.8, 0.7, 0.75]).sum(-1))
    labels = np.select([radius < 0.35, radius < 0.6, radius < 0.8], [3, 2, 1], 0).astype(np.uint8)
    image = (labels * 0.3 + _smooth_volume(shape) * 0.05).astype(np.float32)
    return image, labels


def _lps(affine):
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


PIPELINE = [
    gp.Orientation(["image", "label"], "RAS"),
    gp.Resample(["image", "label"], 1.5),
    gp.CropOrPad(["image", "label"], (24, 26, 22)),
    gp.Flip(["image", "label"], 1),
]


INVERTIBLE_PIPELINE = [
    gp.Orientation(["image", "label"], "RAS"),
    gp.Resample(["image", "label"], 1.5),
    gp.CropForeground(["image", "label"], source_key="label", margin=1),
    gp.Flip(["image", "label"], 1),
]


def test_fused_equals_unfused_and_resamples_once(monkeypatch):
    """Images agree to float rounding; labels exactly, as no voxel falls on an exact x.5 tie here.

    (At exact ties nearest neighbour is ambiguous, and the unfused chain breaks them on an
    intermediate grid whose axes may be flipped, so the two may then pick different neighbours.)
    """
    image, labels = _labelled_head()
    sample = _sample(image, _lps(oblique_affine(spacing=(1.1, 0.9, 1.3))), labels)
    unfused = gp.Compose(PIPELINE, fuse=False)(sample)
    calls = []
    import gpuprep.transforms.chain_geometry as fusion

    original = fusion.resample
    monkeypatch.setattr(fusion, "resample", lambda *a, **k: calls.append(1) or original(*a, **k))
    fused = gp.Compose(PIPELINE)(sample)
    assert len(calls) == 2  # one resampling per key for the whole chain
    torch.testing.assert_close(fused["image"], unfused["image"], rtol=0, atol=1e-5)
    assert torch.equal(fused["label"], unfused["label"])
    torch.testing.assert_close(gp.get_affine(fused, "image"), gp.get_affine(unfused, "image"), rtol=0, atol=1e-12)
    # The same records; the fused ones also say that they were resampled together (for gp.replay).
    count = len(PIPELINE)
    assert [r.pop("fused") for r in gp.get_history(fused)] == [{"index": i, "count": count} for i in range(count)]
    assert gp.get_history(fused) == gp.get_history(unfused)


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    return 2 * np.sum((a == label) & (b == label)) / (np.sum(a == label) + np.sum(b == label))


@pytest.fixture(scope="module")
def brain_labels() -> np.ndarray:
    """Brain-sized labels at 1 mm: the MNI152 brain mask (1) holding a 35 mm-radius core (2)."""
    from nilearn.datasets import load_mni152_brain_mask

    mask = np.asarray(load_mni152_brain_mask(resolution=1).dataobj) > 0
    centre = np.argwhere(mask).mean(0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in mask.shape], indexing="ij"), -1)
    core = np.linalg.norm(grid - centre, axis=-1) < 35
    return np.where(core & mask, 2, mask.astype(np.uint8)).astype(np.uint8)


@pytest.mark.parametrize(
    "affine",
    [oblique_affine(spacing=(1.0, 1.1, 0.9)), np.diag([0.8, 1.0, 2.2, 1.0]), _lps(np.diag([1.0, 1.0, 1.0, 1.0]))],
    ids=["oblique", "anisotropic", "LPS"],
)
def test_invert_maps_labels_back_with_high_dice(affine, brain_labels):
    """Issue target: resample to 1.5 mm, crop, flip, invert: Dice >= 0.98 per label."""
    labels = brain_labels
    sample = _sample(labels.astype(np.float32), affine, labels)
    out = gp.Compose(INVERTIBLE_PIPELINE)(sample)
    assert out["label"].shape[1:] != sample["label"].shape[1:]
    restored = gp.invert(out, "label")
    assert restored["label"].shape == sample["label"].shape and restored["label"].dtype == torch.uint8
    np.testing.assert_array_equal(restored["label_meta"]["affine"].numpy(), affine)
    back = restored["label"][0].numpy()
    for label in (1, 2):
        assert _dice(back, labels, label) >= 0.98, label


def test_invert_a_prediction_given_as_data():
    image, labels = _labelled_head()
    out = gp.Compose(PIPELINE)(_sample(image, np.diag([-1.0, 1.2, 1.0, 1.0]), labels))
    prediction = (out["image"] > 0.45).to(torch.uint8)
    restored = gp.invert(out, "image", data=prediction)
    assert restored["image"].shape == (1, *image.shape) and restored["image"].dtype == torch.uint8
    with pytest.raises(TransformError, match="spatial shape"):
        gp.invert(out, "image", data=torch.zeros(1, 3, 3, 3))


# -- Contract: batches, replay, configs --------------------------------------------------

SPATIAL_EXAMPLES = [
    gp.Resample(["image", "label"], (1.5, 1.0, 2.0)),
    gp.Resize(["image", "label"], (9, 10, 11), mode="cubic"),
    gp.CropOrPad(["image", "label"], (8, 13, 9)),
    gp.CropOrPad(["image", "label"], (8, 13, 9), center="foreground"),
    gp.CropForeground(["image", "label"], source_key="label", margin=1),
    gp.PadToMultiple(["image", "label"], 8),
    gp.Flip(["image", "label"], (0, 2)),
    gp.Rotate90(["image", "label"], 1, (1, 2)),
    gp.Orientation(["image", "label"], "PIL"),
]


@pytest.mark.parametrize("transform", SPATIAL_EXAMPLES, ids=lambda t: type(t).__name__)
def test_batch_equals_singles_and_replay(transform, device):
    samples = []
    for seed in range(3):
        image, labels = _labelled_head((12, 11, 10))
        image = image + seed
        samples.append({k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                        for k, v in _sample(image, oblique_affine(), labels).items()})
    batch = transform(gp.collate(samples))
    for index, sample in enumerate(samples):
        single = transform(sample)
        assert torch.equal(batch["image"][index], single["image"])
        assert torch.equal(batch["label"][index], single["label"])
        assert single["label"].dtype == torch.uint8
        assert gp.get_history(batch)[index] == gp.get_history(single)
        replayed = gp.replay(sample, gp.get_history(single))
        assert torch.equal(replayed["image"], single["image"])
    rebuilt = gp.Compose.from_yaml(gp.Compose([transform]).to_yaml())
    assert rebuilt.get_config() == gp.Compose([transform]).get_config()


@pytest.mark.parametrize(
    "make",
    [
        lambda: gp.Resample("image", 0),
        lambda: gp.Resample("image", (1, 2)),
        lambda: gp.Resample("image", 1, mode="bicubic"),
        lambda: gp.Resize("image", (4, 0, 4)),
        lambda: gp.CropOrPad("image", (4, 4)),
        lambda: gp.Flip("image", 3),
        lambda: gp.Rotate90("image", 1, (0, 0)),
        lambda: gp.PadToMultiple("image", 0),
        lambda: gp.PadToMultiple("image", 8, padding_mode="reflect"),
        lambda: gp.CropForeground("image", "image", margin=-1),
    ],
)
def test_bad_arguments_are_named(make):
    with pytest.raises(ConfigError):
        make()


def test_batch_that_would_get_different_shapes_raises():
    samples = [_sample(np.zeros((8, 8, 8), np.float32), np.diag([s, 1.0, 1.0, 1.0])) for s in (1.0, 2.0)]
    with pytest.raises(TransformError, match="different shapes"):
        gp.Resample("image", 1.0)(gp.collate(samples))
