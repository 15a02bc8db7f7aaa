"""The shared argument checks: bad values raise ConfigError naming owner, argument and value; good ones pass."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.validation import (
    MODES,
    check_bool,
    check_int,
    check_int_or_three,
    check_probability,
    check_seed,
    spatial_axes,
    validate_mode,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", [True, False])
def test_check_bool_returns_a_bool(value):
    assert check_bool("Owner", "flag", value) is value


@pytest.mark.parametrize("value", [1, 0, "yes", None, np.bool_(True)])
def test_check_bool_refuses_a_truthy_value(value):
    with pytest.raises(ConfigError, match=rf"^Owner: flag must be True or False, got {re.escape(repr(value))}$"):
        check_bool("Owner", "flag", value)


@pytest.mark.parametrize(("value", "expected"), [(3, 3), (np.int64(3), 3), (0, 0)])
def test_check_int_returns_a_python_int(value, expected):
    result = check_int("Owner", "count", value, minimum=0)
    assert result == expected and type(result) is int


@pytest.mark.parametrize("value", [-1, 2.0, True, "3", None])
def test_check_int_refuses_non_integers_and_small_ones(value):
    with pytest.raises(ConfigError, match=rf"^Owner: count must be an integer >= 0, got {re.escape(repr(value))}$"):
        check_int("Owner", "count", value, minimum=0)


def test_check_int_names_its_minimum():
    with pytest.raises(ConfigError, match=r"^Owner: count must be an integer >= 1, got 0$"):
        check_int("Owner", "count", 0, minimum=1)


@pytest.mark.parametrize(("value", "expected"), [(4, (4, 4, 4)), ((1, 2, 3), (1, 2, 3)), ([1, 2, 3], (1, 2, 3))])
def test_check_int_or_three_repeats_one_value(value, expected):
    assert check_int_or_three("Owner", "size", value, minimum=1) == expected


@pytest.mark.parametrize(
    ("value", "minimum", "rule"),
    [
        (0, 1, "a positive int"),
        ((1, 2), 1, "a positive int"),
        ((1, 2, 2.5), 1, "a positive int"),
        ((True, 1, 1), 1, "a positive int"),
        (2.5, 1, "a positive int"),
        ((0, -1, 0), 0, "a non-negative int"),
        (1, 2, "an int >= 2"),
    ],
)
def test_check_int_or_three_refuses(value, minimum, rule):
    message = rf"^Owner: size must be {rule} or three of them, got {re.escape(repr(value))}$"
    with pytest.raises(ConfigError, match=message):
        check_int_or_three("Owner", "size", value, minimum=minimum)


@pytest.mark.parametrize(("value", "expected"), [(0, 0.0), (1, 1.0), (0.25, 0.25)])
def test_check_probability_returns_a_float(value, expected):
    result = check_probability("Owner", "p", value)
    assert result == expected and type(result) is float


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), True, "0.5", None])
def test_check_probability_refuses(value):
    with pytest.raises(ConfigError, match=r"^Owner: p must be a probability in \[0, 1\], got "):
        check_probability("Owner", "p", value)


@pytest.mark.parametrize("seed", [None, 0, 2**63])
def test_check_seed_accepts_none_and_non_negative_integers(seed):
    assert check_seed("Owner", seed) == seed


@pytest.mark.parametrize("seed", [-1, 1.0, True, "7"])
def test_check_seed_refuses(seed):
    message = rf"^Owner: seed must be a non-negative integer or None, got {re.escape(repr(seed))}$"
    with pytest.raises(ConfigError, match=message):
        check_seed("Owner", seed)


@pytest.mark.parametrize("mode", MODES)
def test_validate_mode_accepts_the_modes(mode):
    assert validate_mode(mode, "Owner") == mode


@pytest.mark.parametrize("mode", ["onehot", "bilinear", None, ["linear"]])
def test_validate_mode_refuses_other_modes(mode):
    with pytest.raises(ConfigError, match=r"^Owner: mode must be one of \('nearest', 'linear', 'cubic'\), got "):
        validate_mode(mode, "Owner")


@pytest.mark.parametrize(("axes", "expected"), [(0, (0,)), (2, (2,)), ([0, 2], (0, 2)), ((1, 1), (1, 1))])
def test_spatial_axes_returns_a_tuple(axes, expected):
    assert spatial_axes(axes, "Owner") == expected


@pytest.mark.parametrize("axes", [3, -1, True, (), [0, 3], "0", None, 1.0])
def test_spatial_axes_refuses(axes):
    with pytest.raises(ConfigError, match=r"^Owner: axes must be spatial axes among 0, 1, 2, got "):
        spatial_axes(axes, "Owner")


def test_long_values_are_cut_in_messages():
    with pytest.raises(ConfigError) as error:
        check_bool("Owner", "flag", "x" * 10_000)
    assert len(str(error.value)) < 300


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: gp.RandGamma("image", p=2), r"^RandGamma: p must be a probability in \[0, 1\], got 2$"),
        (lambda: gp.RandFlip("image", same_on_batch=1), r"^RandFlip: same_on_batch must be True or False, got 1$"),
        (lambda: gp.RandAffine("image", seed=-3), r"^RandAffine: seed must be a non-negative integer or None, got -3$"),
        (lambda: gp.RandContrast("image", preserve_range="no"),
         r"^RandContrast: preserve_range must be True or False, got 'no'$"),
        (lambda: gp.RandSwap("image", patch_size=0), r"^RandSwap: patch_size must be a positive int or three of them"),
        (lambda: gp.CropForeground("image", "image", margin=-1),
         r"^CropForeground: margin must be a non-negative int or three of them, got -1$"),
        (lambda: gp.Flip("image", axes=5), r"^Flip: axes must be spatial axes among 0, 1, 2, got 5$"),
        (lambda: gp.Resample("image", 1.0, mode="onehot"), r"^Resample: mode must be one of"),
    ],
)
def test_transforms_report_the_shared_messages(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_validation_is_a_bottom_layer():
    """validation.py imports only the errors module, the standard library and NumPy."""
    tree = ast.parse((ROOT / "gpuprep" / "validation.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert imported <= {"__future__", "collections.abc", "typing", "numpy", ".errors"}, imported
