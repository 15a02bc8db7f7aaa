"""Random transforms forward p, same_on_batch, seed, allow_missing_keys as **options; the record is as spelled out."""

from __future__ import annotations

import pytest

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.transforms.base import build_transform
from gpuprep.transforms.random_base import RandomTransform

OPTIONS = ["p", "same_on_batch", "seed", "allow_missing_keys"]


def test_options_are_recorded_after_the_own_arguments_with_their_defaults():
    config = gp.RandGamma("image").get_config()
    assert list(config) == ["keys", "log_gamma", *OPTIONS]
    assert config == {"keys": "image", "log_gamma": (-0.3, 0.3), "p": 1.0, "same_on_batch": False, "seed": None,
                      "allow_missing_keys": False}


def test_options_given_in_any_order_are_recorded_in_the_base_order():
    transform = gp.RandBiasField("image", allow_missing_keys=True, seed=4, p=0.5, order=2)
    assert list(transform.get_config()) == ["keys", "coefficients", "order", *OPTIONS]
    assert repr(transform) == (
        "RandBiasField(keys='image', coefficients=0.5, order=2, p=0.5, same_on_batch=False, seed=4, "
        "allow_missing_keys=True)"
    )
    assert (transform.p, transform.seed, transform.allow_missing_keys) == (0.5, 4, True)


def test_keyword_only_arguments_come_after_the_options():
    config = gp.RandAffine("image", rotate=10, padding_value="minimum", seed=1).get_config()
    assert list(config)[-5:] == [*OPTIONS, "padding_value"]
    assert config["padding_value"] == "minimum" and config["seed"] == 1


def test_a_subclass_naming_p_keeps_its_own_default_and_may_pass_it_by_position():
    assert gp.RandFlip("image").get_config()["p"] == 0.5
    flip = gp.RandFlip("image", (0, 1), 0.25, seed=3)
    assert list(flip.get_config()) == ["keys", "axes", *OPTIONS]
    assert (flip.p, flip.seed) == (0.25, 3)


def test_a_round_trip_rebuilds_the_same_transform():
    transform = gp.RandNoise("image", std=0.2, kind="rician", same_on_batch=True, seed=9)
    rebuilt = build_transform("RandNoise", transform.get_config())
    assert repr(rebuilt) == repr(transform)
    assert gp.Compose.from_yaml(gp.Compose([transform]).to_yaml()).to_yaml() == gp.Compose([transform]).to_yaml()


def test_an_unknown_option_is_refused():
    with pytest.raises(TypeError, match="probability"):
        gp.RandGamma("image", probability=0.5)
    with pytest.raises(ConfigError, match="cannot build RandGamma"):
        build_transform("RandGamma", {"keys": ["image"], "probability": 0.5})


def test_options_are_still_validated():
    with pytest.raises(ConfigError, match=r"RandBlur: p must be a probability in \[0, 1\], got 1.5"):
        gp.RandBlur("image", p=1.5)


class _Scaled(RandomTransform, abstract=True):
    """An intermediate class that forwards options too."""

    def __init__(self, keys, factor=2.0, **options):
        super().__init__(keys, **options)
        self.factor = factor


class _ScaledTwice(_Scaled, abstract=True):
    def __init__(self, keys, times=2, **options):
        super().__init__(keys, **options)
        self.times = times


def test_options_forwarded_through_several_classes_are_recorded_once_in_order():
    transform = _ScaledTwice("image", seed=5, factor=3.0)
    assert transform.get_config() == {"keys": "image", "times": 2, "factor": 3.0, "p": 1.0, "same_on_batch": False,
                                      "seed": 5, "allow_missing_keys": False}
    assert list(transform.get_config()) == ["keys", "times", "factor", *OPTIONS]
