"""Compose: ordering, history, immutability and YAML pipeline files."""

from __future__ import annotations

import pytest
import torch

import gpuprep as gp
from gpuprep.errors import ConfigError


def _sample() -> dict:
    image = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    return gp.make_sample({"image": image}, affine=torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0])))


def test_compose_applies_in_order_and_records_history():
    pipeline = gp.Compose([gp.Orientation("image", "RAS"), gp.Orientation("image", "PSL")])
    sample = _sample()
    out = pipeline(sample)
    manual = gp.Orientation("image", "PSL")(gp.Orientation("image", "RAS")(sample))
    assert torch.equal(out["image"], manual["image"])
    assert [r["name"] for r in gp.get_history(out)] == ["Orientation", "Orientation"]
    assert [r["config"]["axcodes"] for r in gp.get_history(out)] == ["RAS", "PSL"]
    assert gp.get_history(sample) == []


def test_yaml_round_trip_rebuilds_the_same_pipeline(tmp_path):
    pipeline = gp.Compose([gp.Orientation(["image", "label"], "LPS", allow_missing_keys=True)], seed=7)
    path = tmp_path / "pipeline.yaml"
    text = pipeline.to_yaml(path)
    assert path.read_text() == text
    for source in (path, text, str(path)):
        loaded = gp.Compose.from_yaml(source)
        assert loaded.seed == 7
        assert loaded.get_config() == pipeline.get_config()
        assert torch.equal(loaded(_sample())["image"], pipeline(_sample())["image"])


def test_history_configs_rebuild_the_pipeline():
    pipeline = gp.Compose([gp.Orientation("image", "ASR")])
    out = pipeline(_sample())
    config = {"transforms": [{"name": r["name"], "config": r["config"]} for r in gp.get_history(out)]}
    assert torch.equal(gp.Compose.from_config(config)(_sample())["image"], out["image"])


def test_unknown_transform_in_yaml_is_named():
    with pytest.raises(ConfigError, match="'NoSuchTransform'"):
        gp.Compose.from_yaml("transforms:\n- name: NoSuchTransform\n  config: {}\n")


def test_bad_config_argument_is_named():
    with pytest.raises(ConfigError, match="Orientation"):
        gp.Compose.from_yaml("transforms:\n- name: Orientation\n  config: {keys: image, nope: 1}\n")


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_bad_seed(seed):
    with pytest.raises(ConfigError, match="seed"):
        gp.Compose([], seed=seed)


def test_not_a_transform():
    with pytest.raises(ConfigError, match=r"transforms\[1\]"):
        gp.Compose([gp.Orientation("image"), 3])


def test_transform_rejects_non_dict():
    with pytest.raises(gp.errors.TransformError, match="dict"):
        gp.Orientation("image")(torch.zeros(1, 2, 2, 2))
