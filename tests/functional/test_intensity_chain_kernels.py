"""The vectorisable float32 exp and log of the intensity chain's kernel against NumPy's float64 ones."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from gpuprep.functional import intensity_chain_kernels as kernels


def test_log_abs_is_accurate_over_the_float32_range():
    rng = np.random.default_rng(0)
    values = (10.0 ** rng.uniform(-37, 38, 100_000) * rng.choice([-1, 1], 100_000)).astype(np.float32)
    out, bits = np.empty_like(values), np.empty(values.size, np.int32)
    kernels.log_abs(values, out, bits)
    np.testing.assert_allclose(out, np.log(np.abs(values.astype(np.float64))), rtol=0, atol=5e-7 * 88)
    near_one = np.linspace(0.5, 2.0, 10_001, dtype=np.float32)
    kernels.log_abs(near_one, out[: near_one.size], bits[: near_one.size])
    np.testing.assert_allclose(out[: near_one.size], np.log(near_one.astype(np.float64)), rtol=0, atol=3e-7)


def test_exp_is_accurate_and_saturates_like_float32():
    values = np.concatenate([np.linspace(-87, 88.5, 200_001), [-200, -87.5, 88.8, 200, np.nan]]).astype(np.float32)
    out, bits = np.empty_like(values), np.empty(values.size, np.int32)
    kernels.exp_into(values, out, bits)
    with np.errstate(over="ignore"):
        expected = np.exp(values.astype(np.float64)).astype(np.float32)
    finite = np.isfinite(expected) & (expected > 1e-37)
    np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-6)
    assert out[-5] == 0 and out[-4] < 1e-37 and np.isinf(out[-3]) and np.isinf(out[-2]) and np.isnan(out[-1])


def test_log_of_special_values():
    values = np.array([0.0, np.inf, -np.inf, np.nan, 1.0], np.float32)
    out, bits = np.empty_like(values), np.empty(5, np.int32)
    kernels.log_abs(values, out, bits)
    assert out[0] < -87 and np.isinf(out[1]) and np.isinf(out[2]) and np.isnan(out[3]) and abs(out[4]) < 1e-7
