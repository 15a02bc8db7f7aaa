"""SegmentBrain and SkullStrip: geometry back on the input grid, labels, masking, history, batches."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError, TransformError
from gpuprep.models.inference import SegmentBrain
from gpuprep.models.skull_strip import SkullStrip
from gpuprep.sample import image_keys
from tests.conftest import oblique_affine
from tests.models.test_pretrained import LABELS, tiny_checkpoint, tiny_spec

LPS_AFFINE = np.array([[-1.5, 0, 0, 20.0], [0, -1.1, 0, 15.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])
GRIDS = {
    "oblique": (oblique_affine(), (32, 36, 16)),  # 1.2 x 0.9 x 2.5 mm, rotated about three axes
    "lps": (LPS_AFFINE, (26, 30, 20)),
}


class ThresholdNet(torch.nn.Module):
    """A 'network' whose segmentation is known: background below 0.5 (of the rescaled input), else 1."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(20.0))
        self.spec = tiny_spec("brain-mask")

    def forward(self, x):
        return torch.cat([0.5 - x, x - 0.5], dim=1) * self.gain


class LeftRightBiasedNet(ThresholdNet):
    """ThresholdNet that leans to foreground on one side of each window (dim 2, left-right in RAS)."""

    def forward(self, x):
        lean = torch.linspace(-0.3, 0.3, x.shape[2]).view(1, 1, -1, 1, 1)
        return torch.cat([0.5 - x, x - 0.5 + lean], dim=1) * self.gain


def world_distance(affine: np.ndarray, shape, centre) -> np.ndarray:
    """Distance in mm of every voxel centre from the world point ``centre``."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    return np.linalg.norm(world - np.asarray(centre), axis=-1)


def grid_centre(affine: np.ndarray, shape) -> np.ndarray:
    return affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]


def ball_image(affine: np.ndarray, shape, radius: float = 9.0, hole: float = 0.0, centre=None) -> np.ndarray:
    """A smooth bright ball (20 outside, 120 inside, 0.7 mm edge), optionally with a dark hole."""
    distance = world_distance(affine, shape, grid_centre(affine, shape) if centre is None else centre)
    inside = 1 / (1 + np.exp((distance - radius) / 0.7))
    if hole:
        inside = inside * (1 / (1 + np.exp((hole - distance) / 0.7)))
    return 20.0 + 100.0 * inside


def ellipsoid_image(affine: np.ndarray, shape, semi_axes=(12.0, 9.0, 7.0), offset=(2.0, -1.5, 1.0)) -> np.ndarray:
    """An off-centre smooth bright ellipsoid (world semi-axes in mm): a flip or a shift would show."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    world = index @ affine[:3, :3].T + affine[:3, 3] - grid_centre(affine, shape) - np.asarray(offset)
    radius = np.linalg.norm(world / np.asarray(semi_axes), axis=-1)
    return 20.0 + 100.0 / (1 + np.exp((radius - 1) * min(semi_axes) / 0.7))


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.argwhere(mask).mean(0) + affine[:3, 3]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _sample(image: np.ndarray, affine: np.ndarray, device="cpu", **extra) -> dict:
    tensors = {"image": torch.as_tensor(image, dtype=torch.float32)[None].to(device)}
    tensors.update({k: v.to(device) for k, v in extra.items()})
    return gp.make_sample(tensors, affine=affine)


@pytest.fixture(scope="module")
def tissue_checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("weights"), "brain-tissue")


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_label_map_on_the_input_grid(grid, tissue_checkpoint, device):
    affine, shape = GRIDS[grid]
    sample = _sample(ball_image(affine, shape), affine, device)
    snapshot = copy.deepcopy(sample)
    out = SegmentBrain("image", model=tissue_checkpoint, device="cpu")(sample)
    tissue = out["tissue"]
    assert tissue.shape == (1, *shape) and tissue.dtype == torch.uint8 and tissue.device.type == device.type
    assert set(torch.unique(tissue).tolist()) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(gp.get_affine(out, "tissue").numpy(), affine)
    assert out["tissue_meta"] is not out["image_meta"]
    assert torch.equal(out["image"], sample["image"])  # the image itself is untouched
    assert torch.equal(sample["image"], snapshot["image"]) and sample["history"] == []


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_known_predictor_gives_the_segmentation_back_on_the_original_grid(grid):
    """Geometry check: the prediction made on the 2 mm RAS grid lands where the structure is."""
    affine, shape = GRIDS[grid]
    image = ellipsoid_image(affine, shape)
    out = SegmentBrain("image", output_key="seg", model=ThresholdNet())(_sample(image, affine))
    expected = image > 70  # the threshold 0.5 of the rescaled [20, 120] intensities
    predicted = out["seg"][0].numpy().astype(bool)
    assert expected.sum() > 500
    assert dice(predicted, expected) >= 0.95
    np.testing.assert_allclose(world_centroid(predicted, affine), world_centroid(expected, affine), atol=0.5)
    mask = SkullStrip("image", model=ThresholdNet(), largest_component=False, fill_holes=False)(_sample(image, affine))
    assert dice(mask["brain_mask"][0].numpy().astype(bool), expected) >= 0.95


def test_skull_strip_masks_every_key_and_cleans_the_mask_as_scipy():
    affine, shape = GRIDS["lps"]
    centre = grid_centre(affine, shape)
    head = ball_image(affine, shape, radius=10.0, hole=3.0)  # a dark cavity in the middle
    island = ball_image(affine, shape, radius=3.5, centre=centre + np.array([0.0, 0.0, 16.0])) - 20.0
    image = head + island
    label = torch.as_tensor(world_distance(affine, shape, centre) < 14).to(torch.uint8)[None] * 3
    sample = _sample(image, affine, label=label)
    raw = SkullStrip(["image", "label"], model=ThresholdNet(), largest_component=False, fill_holes=False)(sample)
    out = SkullStrip(["image", "label"], model=ThresholdNet())(sample)
    raw_mask = raw["brain_mask"][0].numpy().astype(bool)
    components, count = ndi.label(raw_mask)
    assert count == 2  # the head and the island
    largest = components == 1 + np.argmax(np.bincount(components.ravel())[1:])
    expected = ndi.binary_fill_holes(largest)
    assert not np.array_equal(expected, raw_mask)
    mask = out["brain_mask"]
    assert mask.dtype == torch.uint8 and set(torch.unique(mask).tolist()) == {0, 1}
    np.testing.assert_array_equal(mask[0].numpy().astype(bool), expected)
    inside = mask.bool()
    assert torch.equal(out["image"], torch.where(inside, sample["image"], torch.zeros(())))
    assert out["label"].dtype == torch.uint8
    assert torch.equal(out["label"], torch.where(inside, label, torch.zeros((), dtype=torch.uint8)))
    np.testing.assert_array_equal(gp.get_affine(out, "brain_mask").numpy(), affine)
    kept = SkullStrip("image", model=ThresholdNet(), apply=False)(sample)
    assert torch.equal(kept["image"], sample["image"]) and torch.equal(kept["brain_mask"], mask)


def test_flip_average_makes_the_segmentation_mirror_with_the_image():
    """Averaging each window with its left-right mirror cancels a network's left-right lean."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # RAS at the model's spacing: one 16^3 window, no resampling
    image = ellipsoid_image(affine, (16, 16, 16), semi_axes=(12.0, 11.0, 10.0), offset=(3.0, 1.0, 0.0))
    mirrored = np.ascontiguousarray(image[::-1])
    for flip_average, equivariant in ((True, True), (False, False)):
        segment = SegmentBrain("image", output_key="seg", model=LeftRightBiasedNet(), flip_average=flip_average)
        seg = segment(_sample(image, affine))["seg"][0]
        seg_of_mirrored = segment(_sample(mirrored, affine))["seg"][0]
        assert 300 < int(seg.sum()) < 16**3 - 300
        assert torch.equal(seg_of_mirrored, seg.flip(0)) == equivariant
    record = gp.get_history(segment(_sample(image, affine)))[0]
    assert record["params"]["flip_average"] is False and record["config"]["flip_average"] is False


def test_refine_sharpens_the_probabilities_on_the_image_grid(tissue_checkpoint, monkeypatch):
    """The refinement gets the probabilities and the image on the input's own grid, in mm-scaled widths."""
    import gpuprep.models.segmentation_base as inference  # where the shared inference code lives

    affine, shape = GRIDS["oblique"]
    image = ball_image(affine, shape)
    seen = {}

    def spy(probabilities, picture, tissues, sigma):
        seen.update(shape=tuple(probabilities.shape), sums=probabilities.sum(0), picture=picture,
                    tissues=list(tissues), sigma=sigma)
        swapped = probabilities.clone()
        swapped[[1, 3]] = probabilities[[3, 1]]  # a change the labels must show
        return swapped

    monkeypatch.setattr(inference, "refine_tissue_probabilities", spy)
    plain = SegmentBrain(model=tissue_checkpoint, device="cpu", refine=False)(_sample(image, affine))["tissue"]
    refined = SegmentBrain(model=tissue_checkpoint, device="cpu")(_sample(image, affine))["tissue"]
    assert seen["shape"] == (4, *shape) and seen["tissues"] == [1, 2, 3]
    torch.testing.assert_close(seen["picture"], torch.as_tensor(image, dtype=torch.float32)[None])
    inside = seen["sums"] > 0.5  # the probabilities sum to 1 wherever the preprocessed grid reached
    torch.testing.assert_close(seen["sums"][inside], torch.ones(int(inside.sum())), atol=1e-4, rtol=0)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(seen["sigma"], inference.REFINE_SIGMA_MM / spacing)
    swap = torch.tensor([0, 3, 2, 1], dtype=torch.uint8)
    assert torch.equal(refined, swap[plain.long()])  # the labels are the argmax of what the refinement returned


def test_refine_is_recorded_and_checked(tissue_checkpoint):
    affine, shape = GRIDS["lps"]
    for refine in (True, False):
        segment = SegmentBrain(model=tissue_checkpoint, device="cpu", refine=refine)
        out = segment(_sample(ball_image(affine, shape), affine))
        (record,) = gp.get_history(out)
        assert record["params"]["refine"] is refine and record["config"]["refine"] is refine
    mask_record = gp.get_history(SkullStrip(model=ThresholdNet())(_sample(ball_image(affine, shape), affine)))[0]
    assert mask_record["params"]["refine"] is False
    with pytest.raises(ConfigError, match="refine must be True or False, got 1"):
        SegmentBrain(model=tissue_checkpoint, refine=1)


def test_history_records_the_model(tissue_checkpoint):
    affine, shape = GRIDS["oblique"]
    out = SegmentBrain(model=tissue_checkpoint, device="cpu")(_sample(ball_image(affine, shape), affine))
    (record,) = gp.get_history(out)
    assert record["name"] == "SegmentBrain" and record["keys"] == ["image"]
    params = record["params"]
    assert params["weights_sha256"] == hashlib.sha256(tissue_checkpoint.read_bytes()).hexdigest()
    assert params["model"] == tissue_checkpoint.name and params["task"] == "brain-tissue"
    assert params["labels"] == LABELS["brain-tissue"]
    assert record["config"]["model"] == str(tissue_checkpoint)
    replayed = gp.replay(_sample(ball_image(affine, shape), affine), gp.get_history(out))
    assert torch.equal(replayed["tissue"], out["tissue"])
    module_record = gp.get_history(SkullStrip(model=ThresholdNet())(_sample(ball_image(affine, shape), affine)))[0]
    assert module_record["config"]["model"] == "<module ThresholdNet>"
    assert len(module_record["params"]["weights_sha256"]) == 64


def test_replay_with_other_weights_is_refused(tmp_path):
    affine, shape = GRIDS["lps"]
    path = tiny_checkpoint(tmp_path, "brain-mask", seed=0)
    sample = _sample(ball_image(affine, shape), affine)
    history = gp.get_history(SkullStrip(model=path, device="cpu")(sample))
    tiny_checkpoint(tmp_path, "brain-mask", seed=1).replace(path)  # the file now holds other weights
    with pytest.raises(TransformError, match="weights"):
        gp.replay(sample, history)


def test_batch_equals_singles(tissue_checkpoint):
    shape = (20, 22, 12)
    affines = [oblique_affine(), oblique_affine(angles=(-0.4, 0.1, 0.2), spacing=(1.0, 1.3, 2.0))]
    masks = [box_mask(shape, (3, 4, 2), (15, 18, 10)), box_mask(shape, (6, 2, 1), (20, 14, 12))]
    samples = [_sample(ball_image(a, shape, radius=7.0), a, brain=m) for a, m in zip(affines, masks)]
    for transform in (SegmentBrain(model=tissue_checkpoint, device="cpu"),
                      SegmentBrain(model=tissue_checkpoint, device="cpu", mask_key="brain"),
                      SkullStrip(model=tiny_checkpoint(tissue_checkpoint.parent, "brain-mask"), device="cpu")):
        batch = transform(gp.collate(samples))
        for index, sample in enumerate(samples):
            single = transform(sample)
            for key in image_keys(single):
                assert torch.equal(batch[key][index], single[key]), key
            assert gp.get_history(batch)[index] == gp.get_history(single)


def test_yaml_round_trip(tissue_checkpoint):
    pipeline = gp.Compose([SegmentBrain(model=tissue_checkpoint, device="cpu")])
    rebuilt = gp.Compose.from_yaml(pipeline.to_yaml())
    assert rebuilt.get_config() == pipeline.get_config()


def test_configuration_and_data_errors(tissue_checkpoint):
    with pytest.raises(ConfigError, match="keys must name exactly one image"):
        SegmentBrain(["image", "t2"], model=tissue_checkpoint)
    with pytest.raises(ConfigError, match="output_key must be"):
        SegmentBrain("image", output_key="image", model=tissue_checkpoint)
    with pytest.raises(ConfigError, match=r"overlap must be a number in \[0, 1\), got 1.0"):
        SegmentBrain(model=tissue_checkpoint, overlap=1.0)
    with pytest.raises(ConfigError, match="sw_batch_size must be a positive int, got 0"):
        SegmentBrain(model=tissue_checkpoint, sw_batch_size=0)
    with pytest.raises(ConfigError, match=r"needs a \.spec"):
        SegmentBrain(model=torch.nn.Conv3d(1, 2, 1))
    with pytest.raises(ConfigError, match="model must be"):
        SegmentBrain(model=3)
    with pytest.raises(ConfigError, match="mask_key must be"):
        SkullStrip(["image", "label"], mask_key="label", model=ThresholdNet())
    with pytest.raises(ConfigError, match="source_key must be one of keys"):
        SkullStrip("image", source_key="t1", model=ThresholdNet())
    with pytest.raises(ConfigError, match="flip_average must be True or False, got 'yes'"):
        SegmentBrain(model=tissue_checkpoint, flip_average="yes")
    with pytest.raises(ConfigError, match="apply must be True or False"):
        SkullStrip("image", apply=1, model=ThresholdNet())
    two_channels = gp.make_sample({"image": torch.rand(2, 8, 8, 8)})
    with pytest.raises(TransformError, match="'image' has 2 channel"):
        SegmentBrain(model=tissue_checkpoint, device="cpu")(two_channels)
    other_grid = gp.make_sample({"image": torch.rand(1, 8, 8, 8), "label": torch.zeros(1, 8, 8, 9, dtype=torch.uint8)})
    with pytest.raises(TransformError, match="'label' is not on the grid of 'image'"):
        SkullStrip(["image", "label"], model=ThresholdNet())(other_grid)


class TissueThresholdNet(ThresholdNet):
    """A 'tissue network' whose segmentation is known: background below 0.5 (rescaled input), else GM."""

    def __init__(self):
        super().__init__()
        self.spec = tiny_spec("brain-tissue")

    def forward(self, x):
        low = torch.full_like(x, -1.0)
        return torch.cat([0.5 - x, low, x - 0.5, low], dim=1) * self.gain


def box_mask(shape, low, high) -> torch.Tensor:
    mask = torch.zeros((1, *shape), dtype=torch.uint8)
    mask[(slice(None), *(slice(a, b) for a, b in zip(low, high)))] = 1
    return mask


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_mask_key_segments_inside_the_mask_on_the_right_voxels(grid):
    """With a brain mask the network only sees the mask's box, and the labels land where the structure is."""
    affine, shape = GRIDS[grid]
    image = ellipsoid_image(affine, shape) - 20.0  # background 0: the same rescaling with and without the mask
    mask = box_mask(shape, [n // 4 for n in shape], [n - n // 5 for n in shape])
    inside = mask[0].numpy().astype(bool)
    windows = {}
    for key in (None, "brain"):
        out = SegmentBrain("image", output_key="seg", model=TissueThresholdNet(), refine=False, mask_key=key,
                           mask_margin_mm=3.0, progress=lambda done, total, key=key: windows.__setitem__(key, total))(
            _sample(image, affine, brain=mask))
        predicted = out["seg"][0].numpy()
        expected = np.where(image > 50, 2, 0) * (inside if key else 1)
        assert set(np.unique(predicted)) <= {0, 2}
        assert dice(predicted == 2, expected == 2) >= 0.95
        np.testing.assert_allclose(world_centroid(predicted == 2, affine), world_centroid(expected == 2, affine),
                                   atol=0.5)
        if key:
            assert not predicted[~inside].any()  # nothing outside the mask
    assert windows["brain"] < windows[None]  # only the windows over the mask's box ran


def test_mask_key_crops_to_the_box_and_zeroes_the_image_outside_the_mask(monkeypatch):
    """What goes into the network's preprocessing: the mask's box plus the margin, 0 outside the mask."""
    import gpuprep.models.segmentation_base as inference  # where the shared inference code lives
    from gpuprep.models.inference import MASK_MARGIN_MM

    affine, shape = GRIDS["lps"]
    image = ball_image(affine, shape, radius=12.0)
    low, high = (5, 6, 4), (15, 20, 12)
    mask = box_mask(shape, low, high)
    mask[0, 5, 6, 4] = 0  # a voxel of the box outside the mask
    seen = []
    original = inference.make_sample

    def spy(tensors, affine):
        seen.append((tensors["image"].clone(), torch.as_tensor(affine).clone()))
        return original(tensors, affine=affine)

    monkeypatch.setattr(inference, "make_sample", spy)
    SegmentBrain(model=TissueThresholdNet(), refine=False, mask_key="brain")(_sample(image, affine, brain=mask))
    ((cropped, cropped_affine),) = seen
    margin = [int(np.ceil(MASK_MARGIN_MM / s)) for s in np.linalg.norm(affine[:3, :3], axis=0)]
    start = [max(0, a - m) for a, m in zip(low, margin)]
    stop = [min(n, b + m) for b, m, n in zip(high, margin, shape)]
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    assert tuple(cropped.shape[1:]) == tuple(b - a for a, b in zip(start, stop))
    source = torch.as_tensor(image, dtype=torch.float32)[None]
    torch.testing.assert_close(cropped, torch.where(mask.bool(), source, torch.zeros(()))[(slice(None), *box)])
    np.testing.assert_allclose(cropped_affine.numpy(), _translated(affine, start), atol=1e-9)


def _translated(affine: np.ndarray, start) -> np.ndarray:
    """The affine of the sub-grid whose first voxel is voxel ``start`` of ``affine``'s grid."""
    moved = affine.copy()
    moved[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=float) + affine[:3, 3]
    return moved


def test_mask_key_with_refine_and_errors(tissue_checkpoint):
    affine, shape = GRIDS["oblique"]
    image = ball_image(affine, shape)
    mask = box_mask(shape, (4, 4, 2), (28, 30, 14))
    out = SegmentBrain(model=tissue_checkpoint, device="cpu", mask_key="brain")(_sample(image, affine, brain=mask))
    assert out["tissue"].shape == (1, *shape) and out["tissue"].dtype == torch.uint8
    assert not out["tissue"][mask == 0].any()
    (record,) = gp.get_history(out)
    assert record["config"]["mask_key"] == "brain" and "timer" not in record["config"]
    empty = SegmentBrain(model=tissue_checkpoint, device="cpu", mask_key="brain")(
        _sample(image, affine, brain=torch.zeros_like(mask)))
    assert not empty["tissue"].any()
    with pytest.raises(TransformError, match="the brain mask 'brain' is not in the sample"):
        SegmentBrain(model=tissue_checkpoint, device="cpu", mask_key="brain")(_sample(image, affine))
    other = gp.make_sample({"image": torch.rand(1, 8, 8, 8), "brain": torch.ones(1, 8, 8, 9, dtype=torch.uint8)})
    with pytest.raises(TransformError, match="'brain' is not on the grid of 'image'"):
        SegmentBrain(model=tissue_checkpoint, device="cpu", mask_key="brain")(other)
    with pytest.raises(ConfigError, match="mask_key must be None or a non-empty string"):
        SegmentBrain(model=tissue_checkpoint, mask_key="tissue")
    with pytest.raises(ConfigError, match="mask_margin_mm must be a non-negative number, got -1"):
        SegmentBrain(model=tissue_checkpoint, mask_key="brain", mask_margin_mm=-1)
    with pytest.raises(ConfigError, match="timer must be a callable"):
        SkullStrip(model=ThresholdNet(), timer=3)


def test_timer_is_told_each_stage():
    affine, shape = GRIDS["lps"]
    seen = []
    for transform, stages in ((SegmentBrain, ["network", "refine"]), (SkullStrip, ["network", "clean-up"])):
        seen.clear()
        model = TissueThresholdNet() if transform is SegmentBrain else ThresholdNet()
        out = transform(model=model, timer=lambda stage, seconds: seen.append((stage, seconds)))(
            _sample(ball_image(affine, shape), affine))
        assert [stage for stage, _ in seen] == stages
        assert all(seconds >= 0 for _, seconds in seen)
        assert "timer" not in gp.get_history(out)[0]["config"]


def test_skull_strip_then_segment_brain_in_one_pipeline(tissue_checkpoint):
    """The documented recipe for a whole head: the mask from SkullStrip restricts SegmentBrain."""
    affine, shape = GRIDS["lps"]
    head = ball_image(affine, shape, radius=10.0, hole=3.0)
    pipeline = gp.Compose([SkullStrip("image", mask_key="brain_mask", model=ThresholdNet()),
                           SegmentBrain("image", mask_key="brain_mask", model=tissue_checkpoint, device="cpu")])
    out = pipeline(_sample(head, affine))
    assert [record["name"] for record in gp.get_history(out)] == ["SkullStrip", "SegmentBrain"]
    assert not out["tissue"][out["brain_mask"] == 0].any()
    assert out["brain_mask"].sum() > 100
