"""Untrusted pipelines and arguments fail fast, in bounded memory, with short messages.

A YAML "billion laughs" (nested aliases), configs holding huge or self-multiplying values, and
sizes that would allocate gigabytes (``RandPatches(num_patches=10**9)``, ``MedianDenoise(radius=50)``)
are refused in well under a second, with a :class:`~gpuprep.errors.ConfigError` that names the
argument, the rule and the value, before anything large is built (checked with ``tracemalloc``).
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

import gpuprep as gp
from gpuprep.errors import ConfigError

#: What refusing may cost: time (s) and traced Python memory (bytes).
FAST_S = 1.0
SMALL_BYTES = 4 * 2**20
#: The longest error message a bounded config may produce.
SHORT_MESSAGE = 1000


def refused(build, match: str) -> str:
    """Call ``build``; it must raise ConfigError matching ``match``, fast and in little memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match=match) as caught:
            build()
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < FAST_S, f"took {elapsed:.2f} s"
    assert peak < SMALL_BYTES, f"allocated {peak / 2**20:.1f} MiB"
    message = str(caught.value)
    assert len(message) < SHORT_MESSAGE, f"message of {len(message)} characters"
    return message


def billion_laughs_yaml(levels: int = 9, width: int = 9) -> str:
    """YAML of ``levels`` nested anchors, each a list of ``width`` aliases of the previous one (width^levels leaves)."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    lines.append(f"transforms: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def billion_laughs_value(levels: int = 9, width: int = 9) -> list:
    """The structure that YAML builds: 9^9 leaves that share their lists (cheap to hold, not to print)."""
    value = ["lol"] * width
    for _ in range(levels - 1):
        value = [value] * width
    return value


# -- YAML -----------------------------------------------------------------------------------------


def test_yaml_billion_laughs_is_refused_fast():
    text = billion_laughs_yaml()
    assert len(text) < 600
    message = refused(lambda: gp.Compose.from_yaml(text), "alias")
    assert "line 2" in message and "*a0" in message


def test_yaml_alias_in_a_pipeline_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("keys: &k [image]\ntransforms:\n- name: Flip\n  config: {keys: *k, axes: 0}\n")
    message = refused(lambda: gp.Compose.from_yaml(path), "aliases")
    assert str(path) in message and "line 4" in message


def test_yaml_nested_too_deeply_is_refused():
    refused(lambda: gp.Compose.from_yaml("transforms: " + "[" * 100_000), "nested more than 100 deep")
    refused(lambda: gp.Compose.from_yaml("transforms:\n" + "".join(" " * i + "- \n" for i in range(2000))),
            "nested more than 100 deep")


def test_to_yaml_writes_a_shared_value_out_so_from_yaml_reads_it(monkeypatch):
    keys = ["image", "label"]
    pipeline = gp.Compose([gp.Flip(keys, axes=0), gp.Flip(keys, axes=1)], seed=3)
    config = pipeline.get_config()
    config["transforms"][1]["config"]["keys"] = config["transforms"][0]["config"]["keys"]  # one shared list
    monkeypatch.setattr(gp.Compose, "get_config", lambda self: config)
    text = pipeline.to_yaml()
    assert "*" not in text and "&" not in text  # a shared value is written out twice, not aliased
    assert gp.Compose.from_yaml(text).transforms[1].keys == keys


# -- huge values in a config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"transforms": billion_laughs_value()}, r"transforms\[0\] must have a 'name'"),
        (billion_laughs_value(), "must be a mapping with a 'transforms' list"),
        ({"transforms": [{"name": billion_laughs_value()}]}, "unknown transform"),
        ({"transforms": [{"name": "Flip", "config": billion_laughs_value()}]}, "config must be a mapping"),
        ({"transforms": [{"name": "Flip", "config": {"keys": "image", "axes": billion_laughs_value()}}]},
         "Flip: axes must be spatial axes"),
        ({"transforms": [{"name": "Flip", "config": {"keys": billion_laughs_value()}}]}, "Flip: keys must be"),
        ({"transforms": [{"name": "Flip", "config": {"keys": "image", "extra": billion_laughs_value()}}]},
         "cannot build Flip"),
        ({"seed": billion_laughs_value(), "transforms": []}, "seed must be"),
        ({"transforms": [{"name": "RandGamma", "config": {"keys": "image", "gamma": billion_laughs_value()}}]},
         "gamma"),
    ],
    ids=["entries", "not-a-mapping", "name", "config", "axes", "keys", "unknown-argument", "seed", "range"],
)
def test_huge_config_value_gives_a_short_error_fast(config, match):
    refused(lambda: gp.Compose.from_config(config), match)


def test_short_repr_bounds_long_deep_and_shared_values():
    from gpuprep.errors import short_repr

    assert short_repr("x" * 10**6, limit=50) == repr("x" * 10**6)[:47] + "..."
    assert len(short_repr(billion_laughs_value())) <= 200
    deep = []
    for _ in range(10_000):
        deep = [deep]
    assert len(short_repr(deep)) <= 200
    assert short_repr({"a": 1}) == repr({"a": 1})


# -- oversized arguments ---------------------------------------------------------------------------


def test_randpatches_with_a_billion_patches_fails_fast():
    message = refused(lambda: gp.RandPatches("image", size=8, num_patches=10**9), "num_patches")
    assert "1000000000" in message and "10000" in message


def test_randpatches_whose_patches_add_up_to_too_many_voxels_fails_fast():
    message = refused(lambda: gp.RandPatches("image", size=512, num_patches=100), "num_patches x patch voxels")
    assert "(512, 512, 512)" in message


def test_median_denoise_with_radius_50_fails_fast():
    message = refused(lambda: gp.MedianDenoise("image", radius=50), "radius")
    assert "101 x 101 x 101" in message and "at most 1331" in message


@pytest.mark.parametrize(("argument", "value"), [("patch_distance", 1000), ("patch_size", 10**6 + 1)])
def test_nonlocal_means_with_a_huge_patch_or_search_radius_fails_fast(argument, value):
    message = refused(lambda: gp.NonLocalMeans("image", **{argument: value}), f"NonLocalMeans: {argument}")
    assert str(value) in message
