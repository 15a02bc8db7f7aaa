"""Parameter ranges: what numbers, pairs and per-axis values mean, and the messages for bad ones."""

from __future__ import annotations

import math

import pytest

from gpuprep.errors import ConfigError
from gpuprep.random.ranges import symmetric_range, uniform_range


@pytest.mark.parametrize(("value", "center", "expected"), [
    (10, 0.0, [(-10.0, 10.0)] * 3),
    (0.1, 1.0, [(0.9, 1.1)] * 3),
    ((2, 5), 0.0, [(2.0, 5.0)] * 3),
    ((1, (0, 3), 2.5), 0.0, [(-1.0, 1.0), (0.0, 3.0), (-2.5, 2.5)]),
    (((0, 1), (1, 2), (2, 3)), 0.0, [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]),
    (0, 0.0, [(0.0, 0.0)] * 3),
])
def test_symmetric_range_per_axis(value, center, expected):
    ranges = symmetric_range(value, "rotate", "RandAffine", center=center)
    assert ranges == expected
    assert all(isinstance(bound, float) for pair in ranges for bound in pair)


def test_symmetric_range_of_other_axis_counts():
    assert symmetric_range(5, "x", "T", axes=2) == [(-5.0, 5.0)] * 2
    assert symmetric_range((1, (2, 3)), "x", "T", axes=2) == [(-1.0, 1.0), (2.0, 3.0)]
    assert symmetric_range((1, 2), "x", "T", axes=2) == [(1.0, 2.0)] * 2  # a pair of numbers is one range


@pytest.mark.parametrize(("value", "match"), [
    (-1, r"RandAffine: rotate must be >= 0 \(a half-width\), got -1"),
    ((3, 1), "a pair \\(low, high\\) with low <= high"),
    ((1, 2, 3, 4), "or one of those per axis; got \\(1, 2, 3, 4\\)"),
    ("10", "got '10'"),
    (True, "got True"),
    (math.inf, "got inf"),
    ((1, (2, math.nan), 3), "got \\(1, \\(2, nan\\), 3\\)"),
    (((0, 1), -2, 3), r"must be >= 0 \(a half-width\), got \(\(0, 1\), -2, 3\)"),  # per axis
    ((1, -2, 3), "or one of those per axis"),  # three numbers are no per-axis value: one range has two
])
def test_symmetric_range_refuses_bad_values_naming_owner_argument_and_value(value, match):
    with pytest.raises(ConfigError, match=match):
        symmetric_range(value, "rotate", "RandAffine")


@pytest.mark.parametrize(("value", "minimum", "expected"), [
    (0.5, None, (0.0, 0.5)),
    ((0.2, 0.4), None, (0.2, 0.4)),
    ([1, 1], 0.0, (1.0, 1.0)),
    ((-3, -1), None, (-3.0, -1.0)),
])
def test_uniform_range(value, minimum, expected):
    assert uniform_range(value, "std", "RandNoise", minimum) == expected


@pytest.mark.parametrize(("value", "minimum", "match"), [
    ((0.4, 0.2), None, r"RandNoise: std must be a number or a pair \(low, high\) with low <= high, got \(0.4, 0.2\)"),
    ((-0.1, 0.3), 0.0, r"RandNoise: std must not go below 0.0, got \(-0.1, 0.3\)"),
    (-1, 0.0, r"with low <= high, got -1"),  # a number x means (0, x)
    ((0, 1, 2), None, "a pair"),
    (None, None, "got None"),
    (math.nan, None, "got nan"),
])
def test_uniform_range_refuses_bad_values(value, minimum, match):
    with pytest.raises(ConfigError, match=match):
        uniform_range(value, "std", "RandNoise", minimum)


def test_error_messages_stay_short_for_huge_values():
    with pytest.raises(ConfigError) as error:
        symmetric_range(list(range(10**5)), "rotate", "RandAffine")
    assert len(str(error.value)) < 500
