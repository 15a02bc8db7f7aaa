"""CTWindow against a NumPy reference (np.clip and scaling) and MONAI's ScaleIntensityRange.

Fixed formulas in float32: the tolerance is float32 rounding (``atol=1e-6`` on [0, 1]; exact for HU clipping).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.transforms.intensity.ct_window import CT_WINDOWS

monai_transforms = pytest.importorskip("monai.transforms")


def _ct(seed=0, shape=(1, 10, 12, 9), dtype=torch.float32) -> torch.Tensor:
    """HU over the whole CT range: air, fat, water, brain, blood, bone, metal."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) * 4000 - 1024).round().to(dtype)


def _numpy_window(x: np.ndarray, level: float, width: float) -> np.ndarray:
    low, high = level - width / 2, level + width / 2
    return (np.clip(x.astype(np.float64), low, high) - low) / (high - low)


@pytest.mark.parametrize("window", [*CT_WINDOWS, (35, 90), (-50.5, 600)])
def test_ct_window_matches_numpy_clip_and_scale(window, device):
    image = _ct()
    level, width = CT_WINDOWS[window] if isinstance(window, str) else window
    out = gp.CTWindow("ct", window=window)(gp.make_sample({"ct": image.to(device)}))["ct"]
    assert out.device.type == device.type and out.dtype == torch.float32
    np.testing.assert_allclose(out.cpu().numpy(), _numpy_window(image.numpy(), level, width), rtol=0, atol=1e-6)


@pytest.mark.parametrize("window", list(CT_WINDOWS))
def test_ct_window_matches_monai_scale_intensity_range(window):
    image = _ct(seed=1)
    level, width = CT_WINDOWS[window]
    reference = monai_transforms.ScaleIntensityRange(
        a_min=level - width / 2, a_max=level + width / 2, b_min=0.0, b_max=1.0, clip=True
    )(image.clone())
    out = gp.CTWindow("ct", window=window)(gp.make_sample({"ct": image}))["ct"]
    np.testing.assert_allclose(out.numpy(), np.asarray(reference), rtol=0, atol=1e-6)


def test_ct_window_hu_output_is_np_clip():
    image = _ct(seed=2, dtype=torch.int16)
    out = gp.CTWindow("ct", window="subdural", output="hu")(gp.make_sample({"ct": image}, labels=[]))["ct"]
    assert out.dtype == torch.float32  # an int16 CT becomes float
    np.testing.assert_array_equal(out.numpy(), np.clip(image.numpy(), 75 - 107.5, 75 + 107.5).astype(np.float32))


def test_ct_window_int16_ct_is_windowed_and_label_kind_left_alone():
    """The kind decides, not the dtype: an int16 CT is an image, a float label map is left alone."""
    ct = _ct(seed=3, dtype=torch.int16)
    seg = (torch.rand(1, 10, 12, 9) > 0.5).float()
    sample = gp.make_sample({"ct": ct, "seg": seg}, labels=["seg"])
    out = gp.CTWindow(["ct", "seg"], window="lung")(sample)
    np.testing.assert_allclose(out["ct"].numpy(), _numpy_window(ct.numpy(), -600, 1500), rtol=0, atol=1e-6)
    assert torch.equal(out["seg"], seg)


def test_ct_window_batch_equals_singles():
    samples = [gp.make_sample({"ct": _ct(seed=s)}) for s in range(3)]
    batch = gp.CTWindow("ct", window="bone")(gp.collate(samples))
    for index, sample in enumerate(samples):
        assert torch.equal(batch["ct"][index], gp.CTWindow("ct", window="bone")(sample)["ct"])


def test_ct_window_does_not_sync_with_the_host(forbid_host_sync):
    sample = gp.make_sample({"ct": _ct()})
    forbid_host_sync()
    gp.CTWindow("ct", window="brain")(sample)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": "liver"}, r"window must be one of .*'brain'.*got 'liver'"),
        ({"window": (40,)}, r"window must be one of .*\(level, width\) pair in HU, got \(40,\)"),
        ({"window": (40, 0)}, r"window width must be > 0 HU, got \(level, width\) = \(40, 0\)"),
        ({"window": (40, -80)}, r"window width must be > 0 HU"),
        ({"window": (float("nan"), 80)}, r"window level must be a finite number, got nan"),
        ({"window": "brain", "output": "percent"}, r"output must be one of \('unit', 'hu'\), got 'percent'"),
    ],
)
def test_ct_window_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=r"CTWindow: " + message):
        gp.CTWindow("ct", **kwargs)


def test_ct_window_config_round_trip_with_pair():
    transform = gp.CTWindow("ct", window=(50, 350), output="hu")
    rebuilt = gp.Compose.from_yaml(gp.Compose([transform]).to_yaml()).transforms[0]
    assert (rebuilt.level, rebuilt.width, rebuilt.output) == (50.0, 350.0, "hu")


def test_ct_head_preprocessing_preset():
    """The preset orients, resamples, windows and crops/pads an oblique int16 CT with a label map."""
    from gpuprep.transforms.presets import ct_head_preprocessing
    from tests.conftest import oblique_affine

    ct = _ct(seed=4, shape=(1, 20, 18, 16), dtype=torch.int16)
    seg = (ct > 300).to(torch.uint8)
    sample = gp.make_sample({"image": ct, "seg": seg}, affine=oblique_affine(), labels=["seg"])
    out = ct_head_preprocessing(label_keys=["seg"], spacing=2.0, shape=(16, 16, 16))(sample)
    assert tuple(out["image"].shape) == tuple(out["seg"].shape) == (1, 16, 16, 16)
    assert out["image"].dtype == torch.float32 and out["seg"].dtype == torch.uint8
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    assert set(torch.unique(out["seg"]).tolist()) <= {0, 1}
    assert gp.axcodes_of(gp.get_affine(out, "image")) == "RAS"
    np.testing.assert_allclose(np.linalg.norm(gp.get_affine(out, "image")[:3, :3].numpy(), axis=0), 2.0, atol=1e-9)
    assert [r["name"] for r in gp.get_history(out)] == ["Orientation", "Resample", "CTWindow", "CropOrPad"]



def test_ct_head_preprocessing_resamples_with_air_padding():
    """Whatever the resampling takes from outside the scan is air (-1000 HU), not water (0 HU)."""
    from gpuprep.transforms.presets import ct_head_preprocessing

    resample = ct_head_preprocessing(label_keys=["seg"]).transforms[1]
    assert type(resample).__name__ == "Resample" and resample.get_config()["padding_value"] == -1000
