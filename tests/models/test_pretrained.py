"""U-Net builder, checkpoint files and the pretrained-weights loader (tiny random checkpoints)."""

from __future__ import annotations

import functools
import hashlib
import re
import tempfile
from pathlib import Path

import pytest
import torch

from gpuprep.errors import ConfigError, ImageWriteError
from gpuprep.models import pretrained
from gpuprep.models.pretrained import TASKS, WeightsNotBundledError, load_pretrained, weights_path
from gpuprep.models.unet import CheckpointError, build_unet, load_checkpoint, save_checkpoint

LABELS = {
    "brain-tissue": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"},
    "brain-mask": {"0": "background", "1": "brain"},
}


def tiny_spec(task: str = "brain-tissue", channels=(4, 8), roi_size=(16, 16, 16)) -> dict:
    """A valid spec for a tiny U-Net (two levels, one stride of 2)."""
    labels = LABELS[task]
    architecture = {"spatial_dims": 3, "in_channels": 1, "out_channels": len(labels), "channels": list(channels),
                    "strides": [2] * (len(channels) - 1), "num_res_units": 1}
    return {"task": task, "architecture": architecture, "labels": labels, "spacing_mm": 2.0,
            "intensity": {"percentiles": [0.5, 99.5]}, "roi_size": list(roi_size), "training": {"steps": 0}}


def tiny_checkpoint(directory: str | Path, task: str = "brain-tissue", seed: int = 0, **kwargs) -> Path:
    """Write a randomly initialised tiny checkpoint for ``task`` into ``directory``."""
    spec = tiny_spec(task, **kwargs)
    torch.manual_seed(seed)
    return save_checkpoint(Path(directory) / f"tiny-{task}-{seed}.pt", build_unet(spec["architecture"]), spec)


@functools.cache
def cached_tiny_checkpoint(task: str = "brain-tissue") -> str:
    """One tiny checkpoint per task and process, for tests that cannot take ``tmp_path`` (contract examples)."""
    return str(tiny_checkpoint(tempfile.mkdtemp(prefix="gpuprep-tiny-"), task))


ARCH = tiny_spec()["architecture"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"channels": None}, "missing keys ['channels']"),
        ({"depth": 3}, "unknown keys ['depth']"),
        ({"spatial_dims": 2}, "spatial_dims must be 3"),
        ({"out_channels": 0}, "out_channels must be a positive int"),
        ({"strides": [2, 2]}, "strides one entry fewer"),
        ({"channels": [4, "8"]}, "channels must be a non-empty list of positive ints"),
        ({"num_res_units": -1}, "num_res_units must be a non-negative int"),
    ],
)
def test_build_unet_validates_the_architecture(change, words):
    architecture = {**ARCH, **change}
    architecture = {k: v for k, v in architecture.items() if v is not None}
    with pytest.raises(ConfigError, match=re.escape(words)):
        build_unet(architecture)


def test_build_unet_is_monai_unet():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = build_unet(ARCH)
    reference = UNet(3, 1, 4, (4, 8), (2,), num_res_units=1)
    reference.load_state_dict(net.state_dict())
    x = torch.rand(1, 1, 8, 8, 8)
    assert isinstance(net, UNet)
    torch.testing.assert_close(net.eval()(x), reference.eval()(x), rtol=0, atol=0)


def test_checkpoint_round_trip_is_half_precision_and_loads_as_float32(tmp_path):
    spec = tiny_spec()
    torch.manual_seed(1)
    net = build_unet(spec["architecture"]).eval()
    path = save_checkpoint(tmp_path / "net.pt", net, spec)
    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert raw["format"] == 1 and raw["spec"]["task"] == "brain-tissue"
    assert raw["spec"]["gpuprep_version"] and raw["spec"]["training"] == {"steps": 0}
    assert all(t.dtype == torch.float16 for t in raw["state_dict"].values() if t.is_floating_point())
    model, loaded = load_checkpoint(path)
    assert loaded == raw["spec"] and model.spec == loaded and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # The loaded weights are the saved ones rounded to float16, nothing else.
    for name, tensor in net.state_dict().items():
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        assert torch.equal(model.state_dict()[name], expected), name
    full = save_checkpoint(tmp_path / "full.pt", net, spec, half=False)
    assert path.stat().st_size < 0.75 * full.stat().st_size
    model_full, _ = load_checkpoint(full)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model_full(x), net(x), rtol=0, atol=0)


def test_save_checkpoint_is_atomic_and_checks_the_model(tmp_path):
    spec = tiny_spec()
    with pytest.raises(ImageWriteError, match="does not exist"):
        save_checkpoint(tmp_path / "missing" / "net.pt", build_unet(spec["architecture"]), spec)
    other = build_unet({**spec["architecture"], "channels": [4, 16]})
    with pytest.raises(CheckpointError, match="do not fit"):
        save_checkpoint(tmp_path / "net.pt", other, spec)
    with pytest.raises(CheckpointError, match="roi_size"):
        save_checkpoint(tmp_path / "net.pt", build_unet(spec["architecture"]), {**spec, "roi_size": [15, 16, 16]})
    with pytest.raises(CheckpointError, match="labels"):
        save_checkpoint(tmp_path / "net.pt", build_unet(spec["architecture"]), {**spec, "labels": {"0": "x"}})
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


def test_load_checkpoint_errors_name_the_file(tmp_path):
    missing = tmp_path / "absent.pt"
    with pytest.raises(CheckpointError, match=f"not found: {missing}"):
        load_checkpoint(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=f"{garbage}: not a gpuprep model checkpoint"):
        load_checkpoint(garbage)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match=f"{plain}: not a gpuprep model checkpoint"):
        load_checkpoint(plain)
    good = torch.load(tiny_checkpoint(tmp_path), weights_only=True)
    future = tmp_path / "future.pt"
    torch.save({**good, "format": 2}, future)
    with pytest.raises(CheckpointError, match=f"{future}: checkpoint format 2 is not supported"):
        load_checkpoint(future)
    mismatch = tmp_path / "mismatch.pt"
    spec = {**good["spec"], "architecture": {**good["spec"]["architecture"], "channels": [4, 16]}}
    torch.save({**good, "spec": spec}, mismatch)
    with pytest.raises(CheckpointError, match=f"{mismatch}: the weights do not fit the architecture"):
        load_checkpoint(mismatch)


def test_weights_path_and_unknown_task():
    assert TASKS == ("brain-tissue", "brain-mask")
    for task in TASKS:
        path = weights_path(task)
        assert path.name == f"{task}.pt" and path.parent.name == "weights" and path.parent.parent.name == "models"
    with pytest.raises(ConfigError, match="task must be one of"):
        weights_path("brain-lesion")


def test_missing_bundled_weights_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsNotBundledError, match="not bundled in this build"):
        load_pretrained("brain-mask", device="cpu")


def test_load_pretrained_by_task_and_by_path(tmp_path, monkeypatch):
    path = tiny_checkpoint(tmp_path, "brain-mask")
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    path.rename(tmp_path / "brain-mask.pt")
    model = load_pretrained("brain-mask", device="cpu")
    assert model.spec["task"] == "brain-mask" and model.spec["labels"] == LABELS["brain-mask"]
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert model.weights_file == "brain-mask.pt"
    by_path = load_pretrained(tmp_path / "brain-mask.pt", device="cpu")
    assert by_path.weights_sha256 == model.weights_sha256
    with pytest.raises(ConfigError, match="device"):
        load_pretrained(tmp_path / "brain-mask.pt", device="tpu-ish")
    with pytest.raises(ConfigError, match="task_or_path"):
        load_pretrained(3)


def test_load_pretrained_on_the_device(tmp_path, device):
    model = load_pretrained(tiny_checkpoint(tmp_path), device=device)
    assert next(model.parameters()).device.type == device.type
    with torch.no_grad():
        out = model(torch.rand(1, 1, 16, 16, 16, device=device))
    assert out.shape == (1, 4, 16, 16, 16)
