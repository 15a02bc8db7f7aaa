"""The contract every registered transform keeps (docs/design.md, "Tests").

Each registered transform needs an entry in ``EXAMPLES`` (a factory building it for the keys
``image`` (float) and ``label`` (uint8)); a transform added without one fails
``test_every_transform_has_an_example``.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import gpuprep as gp
import gpuprep.functional.resample as resample_module
import gpuprep.transforms.chain_geometry as chain_geometry
from gpuprep.errors import MissingKeyError
from gpuprep.transforms.base import REGISTRY
from gpuprep.transforms.random_base import RandomTransform
from tests.conftest import oblique_affine
from tests.models.test_pretrained import cached_tiny_checkpoint

KEYS = ["image", "label"]

#: name -> factory. IO transforms have their own tests (they take paths, not tensors).
EXAMPLES = {
    "Orientation": lambda: gp.Orientation(KEYS, "LPI"),
    "Resample": lambda: gp.Resample(KEYS, 1.7),
    "Resize": lambda: gp.Resize(KEYS, (10, 9, 12)),
    "ResampleToReference": lambda: gp.ResampleToReference("label", reference_key="image"),
    "ApplyTransform": lambda: gp.ApplyTransform(
        KEYS, transform=[[1, 0, 0, 1.5], [0, 0.9, 0, 0], [0, 0, 1, -1], [0, 0, 0, 1]], reference_key="image"),
    "RegisterToReference": lambda: gp.RegisterToReference(KEYS, reference_key="image", model="rigid", levels=1,
                                                          iterations=[3], points=500),
    "CropOrPad": lambda: gp.CropOrPad(KEYS, (10, 16, 9)),
    "CropForeground": lambda: gp.CropForeground(KEYS, source_key="label", margin=1),
    "PadToMultiple": lambda: gp.PadToMultiple(KEYS, 8),
    "Flip": lambda: gp.Flip(KEYS, (0, 1)),
    "Rotate90": lambda: gp.Rotate90(KEYS, 1, (0, 2)),
    "RescaleIntensity": lambda: gp.RescaleIntensity(KEYS, mask="label"),
    "ZNormalize": lambda: gp.ZNormalize(KEYS),
    "ScaleIntensityRange": lambda: gp.ScaleIntensityRange(KEYS, 0.0, 2.0, -1.0, 1.0, clip=True),
    "Clip": lambda: gp.Clip(KEYS, min=0.6, max=1.5),
    "CTWindow": lambda: gp.CTWindow(KEYS, window=(1.0, 1.2)),  # the example image is not in HU
    # A mask as an extra input channel; the stack is a new key, the sources are kept.
    "ConcatKeys": lambda: gp.ConcatKeys(KEYS, output_key="stacked", allow_mixed_kinds=True),
    "HistogramStandardize": lambda: gp.HistogramStandardize(KEYS, mask="nonzero"),
    "BiasFieldCorrection": lambda: gp.BiasFieldCorrection(KEYS, shrink=2, levels=2, iterations=5),
    "ForegroundMask": lambda: gp.ForegroundMask("image", closing_radius=1),
    "MaskImage": lambda: gp.MaskImage(KEYS, mask_key="label"),
    "GaussianDenoise": lambda: gp.GaussianDenoise(KEYS, sigma=1.5),
    "MedianDenoise": lambda: gp.MedianDenoise(KEYS, radius=1),
    "WaveletDenoise": lambda: gp.WaveletDenoise(KEYS, wavelet="db2"),
    "AnisotropicDiffusion": lambda: gp.AnisotropicDiffusion(KEYS, iterations=3, kappa=1.0),
    "NonLocalMeans": lambda: gp.NonLocalMeans(KEYS, patch_size=3, patch_distance=1),
    "RandFlip": lambda: gp.RandFlip(KEYS, axes=(0, 1, 2), p=0.7, seed=0),
    "RandRotate90": lambda: gp.RandRotate90(KEYS, axes=(0, 1), p=0.9, seed=0),  # a square plane
    "RandAffine": lambda: gp.RandAffine(KEYS, rotate=10, scale=0.1, shear=0.05, translate=2, seed=0),
    "RandNoise": lambda: gp.RandNoise(KEYS, std=0.1, seed=0),
    "RandGamma": lambda: gp.RandGamma(KEYS, log_gamma=0.3, seed=0),
    "RandBiasField": lambda: gp.RandBiasField(KEYS, coefficients=0.5, order=3, seed=0),
    "RandContrast": lambda: gp.RandContrast(KEYS, factor=(0.75, 1.25), seed=0),
    "RandBrightness": lambda: gp.RandBrightness(KEYS, shift=0.1, seed=0),
    "RandBlur": lambda: gp.RandBlur(KEYS, std=(0.5, 1.5), seed=0),
    "RandAnisotropy": lambda: gp.RandAnisotropy(KEYS, downsampling=(1.5, 4.0), seed=0),
    "RandSwap": lambda: gp.RandSwap(KEYS, patch_size=3, num_iterations=5, seed=0),
    "RandGhosting": lambda: gp.RandGhosting(KEYS, num_ghosts=(2, 5), restore=0.2, seed=0),
    "RandSpike": lambda: gp.RandSpike(KEYS, num_spikes=(1, 2), intensity=(0.5, 1.0), seed=0),
    "RandGibbs": lambda: gp.RandGibbs(KEYS, alpha=(0.2, 0.6), seed=0),
    "RandElastic": lambda: gp.RandElastic(KEYS, num_control_points=5, max_displacement=3.0, seed=0),
    "RandMotion": lambda: gp.RandMotion(KEYS, degrees=10, translation=10, num_transforms=2, seed=0),
    "RandLabelsToImage": lambda: gp.RandLabelsToImage(num_labels=3, zero_background=0.5, p=0.8, seed=0),
    "OneOf": lambda: gp.OneOf([gp.RandFlip(KEYS, p=1.0), gp.RandRotate90(KEYS, p=1.0)], weights=[1, 2], seed=0),
    "SomeOf": lambda: gp.SomeOf([gp.RandFlip(KEYS, p=1.0), gp.Rotate90(KEYS), gp.ZNormalize(KEYS)], k=1, seed=0),
    # Tiny random U-Nets (tests/models/test_pretrained.py); the label map is a new key on the image's grid.
    "SegmentBrain": lambda: gp.SegmentBrain("image", model=cached_tiny_checkpoint("brain-tissue")),
    "SkullStrip": lambda: gp.SkullStrip(KEYS, model=cached_tiny_checkpoint("brain-mask")),
}
NOT_TENSOR_TRANSFORMS = {"LoadImage", "SaveImage"}
#: Transforms that change the batch size, so the generic checks below do not apply; their own
#: tests cover the contract points (keys and dtypes kept, labels preserved, JSON records, seeded
#: and replayable, batch equals singles, invertible).
BATCH_CHANGING_TRANSFORMS = {
    "RandPatches",  # B samples -> B * num_patches patches; see tests/data/test_patches.py
}
#: Transforms whose inverse is exact (no interpolation on the way there or back).
EXACT_INVERSE = {"Orientation", "Flip", "Rotate90", "RandFlip", "RandRotate90"}


def _sample(seed: int = 0, device="cpu") -> dict:
    generator = torch.Generator().manual_seed(seed)
    shape = (12, 12, 11)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = (grid**2).sum(0).sqrt()
    label = ((radius < 0.8).to(torch.uint8) + (radius < 0.4).to(torch.uint8))[None]
    # Zero background, so that "nonzero" masks matter.
    image = (label.float() + 0.1 * torch.rand((1, *shape), generator=generator) + 0.5) * (radius < 0.9)
    sample = gp.make_sample({"image": image.to(device), "label": label.to(device)}, affine=oblique_affine())
    sample[gp.random.SAMPLE_INDEX_KEY] = seed  # random transforms draw per dataset index
    return sample


def _transforms():
    return sorted(name for name in REGISTRY if name not in NOT_TENSOR_TRANSFORMS | BATCH_CHANGING_TRANSFORMS)


def test_every_transform_has_an_example():
    missing = [name for name in _transforms() if name not in EXAMPLES]
    assert not missing, f"add contract examples for {missing}"


@pytest.fixture(params=_transforms())
def transform(request):
    if request.param not in EXAMPLES:
        pytest.fail(f"no contract example for {request.param}")
    return EXAMPLES[request.param]()


def test_keys_shapes_dtypes_device(transform, device):
    sample = _sample(device=device)
    out = transform(sample)
    assert set(sample) <= set(out)
    for key in KEYS:
        assert out[key].device.type == device.type
        assert out[key].dtype == sample[key].dtype
        assert out[key].ndim == 4
        assert gp.get_affine(out, key).dtype == torch.float64
    assert len(gp.get_history(out)) == 1


def test_float_dtypes_kept(transform):
    for dtype in (torch.float64, torch.float16) if not transform.spatial else (torch.float64,):
        sample = _sample()
        sample["image"] = sample["image"].to(dtype)
        assert transform(sample)["image"].dtype == dtype


def test_records_are_json(transform):
    record = gp.get_history(transform(_sample()))[-1]
    assert json.loads(json.dumps(record)) == record


def test_label_values_preserved(transform):
    sample = _sample()
    out = transform(sample)
    assert set(torch.unique(out["label"]).tolist()) <= {0, 1, 2}


def test_missing_key_error(transform):
    sample = _sample()
    del sample["label"], sample["label_meta"]
    if "label" in transform.keys:
        with pytest.raises(MissingKeyError):
            transform(sample)


def test_input_not_mutated(transform):
    sample = _sample()
    snapshot = copy.deepcopy(sample)
    transform(sample)
    for key in KEYS:
        assert torch.equal(sample[key], snapshot[key])
        assert torch.equal(gp.get_affine(sample, key), gp.get_affine(snapshot, key))
    assert sample["history"] == []


def test_deterministic_and_replayable(transform):
    sample = _sample()
    first, second = transform(sample), transform(sample)
    replayed = gp.replay(sample, gp.get_history(first))
    for key in KEYS:
        assert torch.equal(first[key], second[key])
        assert torch.equal(first[key], replayed[key])


def test_batch_equals_singles(transform):
    samples = [_sample(seed) for seed in range(3)]
    batch = transform(gp.collate(samples))
    for index, sample in enumerate(samples):
        single = transform(sample)
        for key in KEYS:
            torch.testing.assert_close(batch[key][index], single[key], rtol=0, atol=1e-6)
        assert gp.get_history(batch)[index] == gp.get_history(single)


def test_yaml_round_trip(transform):
    pipeline = gp.Compose([transform])
    rebuilt = gp.Compose.from_yaml(pipeline.to_yaml())
    assert rebuilt.get_config() == pipeline.get_config()
    sample = _sample()
    assert torch.equal(rebuilt(sample)["image"], pipeline(sample)["image"])


@pytest.mark.parametrize("name", [n for n in _transforms() if issubclass(REGISTRY[n], RandomTransform)])
def test_random_p0_is_identity_and_seed_matters(name):
    transform = EXAMPLES[name]()
    sample = _sample()
    skipped = type(transform)(**{**transform.get_config(), "p": 0.0})(sample)
    for key in KEYS:
        assert torch.equal(skipped[key], sample[key])
        assert torch.equal(gp.get_affine(skipped, key), gp.get_affine(sample, key))
    draws = {json.dumps(gp.get_history(type(transform)(**{**transform.get_config(), "seed": seed})(sample)))
             for seed in range(8)}
    assert len(draws) > 1  # parameters really are random


@pytest.mark.parametrize("name", [n for n in _transforms() if REGISTRY[n].spatial])
def test_fused_kernel_matches_the_torch_path(name, monkeypatch):
    """On the CPU with numba, spatial steps sample through the fused kernel; the torch path gives the same."""
    pytest.importorskip("numba")
    transform = EXAMPLES[name]()
    batch = gp.collate([_sample(seed) for seed in range(2)])
    kernel = transform(batch)
    monkeypatch.setattr(resample_module, "numba_ready", lambda volume: False)
    monkeypatch.setattr(chain_geometry, "warp_image_and_labels", lambda *args: None)  # elastic: the torch path
    reference = transform(batch)
    torch.testing.assert_close(kernel["image"], reference["image"], rtol=0, atol=1e-5)
    assert torch.equal(kernel["label"], reference["label"])
    assert gp.get_history(kernel) == gp.get_history(reference)


@pytest.mark.parametrize("name", [n for n in _transforms() if getattr(REGISTRY[n], "voxelwise", False)])
def test_voxel_wise_steps_fuse_into_one_pass_with_the_same_results(name):
    """A voxel-wise intensity transform fused with its neighbours (one pass, numba on the CPU) gives the results
    of the unfused chain (1e-5), the same parameters, batch equals singles and replay equals the original."""
    steps = [gp.RandGamma(KEYS, log_gamma=0.2, seed=7), EXAMPLES[name](), gp.RandBrightness(KEYS, shift=0.1, seed=8)]
    if getattr(REGISTRY[name], "needs_input_statistics", False):
        steps = steps[1:]  # a contrast step starts a run
    samples = [_sample(seed) for seed in range(2)]
    fused = gp.Compose(steps, seed=0)
    assert len(fused._runs()) == 1
    out = fused(gp.collate(samples))
    reference = gp.Compose(steps, seed=0, fuse=False)(gp.collate(samples))
    torch.testing.assert_close(out["image"], reference["image"], rtol=1e-5, atol=1e-5)
    assert torch.equal(out["label"], reference["label"])
    strip = [[{k: v for k, v in r.items() if k != "fused"} for r in h] for h in gp.get_history(out)]
    assert strip == gp.get_history(reference)
    for index, sample in enumerate(samples):
        assert torch.equal(fused(sample)["image"], out["image"][index])
    assert torch.equal(gp.replay(gp.collate(samples), gp.get_history(out))["image"], out["image"])


def test_only_spatial_transforms_claim_to_be_invertible():
    """``invertible`` means "undone by gp.invert", which undoes spatial records and skips the others."""
    claims = [name for name, cls in REGISTRY.items() if cls.invertible and not cls.spatial]
    assert not claims, f"{claims} claim invertible but gp.invert skips non-spatial records"


@pytest.mark.parametrize("name", [n for n in _transforms() if REGISTRY[n].invertible])
def test_invert_recovers_the_input(name):
    transform = EXAMPLES[name]()
    sample = _sample()
    out = transform(sample)
    for key in transform.keys:
        back = gp.invert(out, key)
        assert back[key].shape == sample[key].shape
        np.testing.assert_array_equal(back[f"{key}_meta"]["affine"].numpy(), gp.get_affine(sample, key).numpy())
        if type(transform).__name__ in EXACT_INVERSE:
            assert torch.equal(back[key], sample[key])
        elif key == "label" and transform.spatial:
            agreement = (back[key] == sample[key]).float().mean()
            assert agreement > 0.8  # tiny volumes: resampling loses the thinnest boundary voxels
