"""The transform contract (DESIGN.md, "Tests") for the intensity and mask transforms.

The same checks as tests/transforms/test_contract.py, on an image with a background of zeros
(so "nonzero" masks matter) and a uint8 label map; batch-vs-single and replay must be exact.
"""

from __future__ import annotations

import copy

import pytest
import torch

import gpuprep as gp
from gpuprep.errors import MissingKeyError
from gpuprep.transforms.intensity import (
    Clip,
    HistogramStandardize,
    RescaleIntensity,
    ScaleIntensityRange,
    ZNormalize,
)
from gpuprep.transforms.mask import ForegroundMask, MaskImage
from tests.conftest import oblique_affine

KEYS = ["image", "label"]

EXAMPLES = {
    "RescaleIntensity": lambda: RescaleIntensity(KEYS, mask="label"),
    "ZNormalize": lambda: ZNormalize(KEYS),
    "ScaleIntensityRange": lambda: ScaleIntensityRange(KEYS, 0.0, 2.0, -1.0, 1.0, clip=True),
    "Clip": lambda: Clip(KEYS, min=0.6, max=1.5),
    "HistogramStandardize": lambda: HistogramStandardize(KEYS, mask="nonzero"),
    "ForegroundMask": lambda: ForegroundMask("image", closing_radius=1),
    "MaskImage": lambda: MaskImage(KEYS, mask_key="label", fill=-1.0),
}


def _sample(seed: int = 0, device="cpu") -> dict:
    generator = torch.Generator().manual_seed(seed)
    shape = (12, 14, 11)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = (grid**2).sum(0).sqrt()
    label = ((radius < 0.8).to(torch.uint8) + (radius < 0.4).to(torch.uint8))[None]
    image = (label.float() + 0.3 * torch.rand((1, *shape), generator=generator) + 0.5) * (radius < 0.9)
    return gp.make_sample({"image": image.to(device), "label": label.to(device)}, affine=oblique_affine())


@pytest.fixture(params=sorted(EXAMPLES))
def transform(request):
    return EXAMPLES[request.param]()


def test_keys_shapes_dtypes_device(transform, device):
    sample = _sample(device=device)
    out = transform(sample)
    assert set(sample) <= set(out)
    for key in KEYS:
        assert out[key].device.type == device.type and out[key].dtype == sample[key].dtype
        assert out[key].shape == sample[key].shape
        assert torch.equal(gp.get_affine(out, key), gp.get_affine(sample, key))
    assert torch.equal(out["label"], sample["label"])  # label maps untouched
    assert len(gp.get_history(out)) == 1


def test_float64_and_float16_kept(transform):
    for dtype in (torch.float64, torch.float16):
        sample = _sample()
        sample["image"] = sample["image"].to(dtype)
        assert transform(sample)["image"].dtype == dtype


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
    assert sorted(sample) == sorted(snapshot)
    for key in KEYS:
        assert torch.equal(sample[key], snapshot[key])
        assert torch.equal(gp.get_affine(sample, key), gp.get_affine(snapshot, key))
    assert sample["history"] == []


def test_deterministic_and_replayable(transform):
    sample = _sample()
    first, second = transform(sample), transform(sample)
    replayed = gp.replay(sample, gp.get_history(first))
    for key in [*KEYS, *(k for k in first if k not in sample and isinstance(first[k], torch.Tensor))]:
        assert torch.equal(first[key], second[key])
        assert torch.equal(first[key], replayed[key])


def test_batch_equals_singles(transform):
    samples = [_sample(seed) for seed in range(3)]
    samples[1]["image"] = samples[1]["image"] * 3 + 1  # different statistics per sample
    batch = transform(gp.collate(samples))
    for index, sample in enumerate(samples):
        single = transform(sample)
        for key in single:
            if isinstance(single[key], torch.Tensor):
                torch.testing.assert_close(batch[key][index], single[key], rtol=0, atol=1e-6)
        assert gp.get_history(batch)[index] == gp.get_history(single)


def test_yaml_round_trip(transform):
    pipeline = gp.Compose([transform])
    rebuilt = gp.Compose.from_yaml(pipeline.to_yaml())
    assert rebuilt.get_config() == pipeline.get_config()
    sample = _sample()
    assert torch.equal(rebuilt(sample)["image"], pipeline(sample)["image"])


def test_records_are_json(transform):
    import json

    record = gp.get_history(transform(_sample()))[-1]
    assert json.loads(json.dumps(record)) == record
    assert record["params"] == {}  # data-derived statistics are recomputed, never read back
