"""The numba kernel of :mod:`gpuprep.functional.intensity_chain` (CPU; imported only when numba is).

:func:`voxel_chain` applies a chain of voxel-wise intensity steps to a float32 batch in one
pass: in parallel over ``(sample, slice)``, each image row is read once into a small buffer,
every step runs over the buffer as a loop that LLVM vectorises, and the row is written once.
Each row's noise is read before the row is written, so ``out`` may be the noise array's first
volume. A step is a code of :data:`CODES` with, per sample, an ``applied`` flag and up to four
numbers:

- ``BIAS``: ``v * exp(p(u, v, w))``, the polynomial of the sample's coefficient cube
  ``cubes[b, k]`` (``[S, S, S]`` on the D, H, W exponents) at the voxel's coordinates;
- ``GAMMA``: ``sign(v) |v| ** g``;
- ``SHIFT``: ``v + s``;
- ``NOISE``: ``v + (mean + std * n)``, ``n`` from ``noise[b, slot]``;
- ``RICIAN``: ``sqrt((v + mean + std n1) ** 2 + (mean + std n2) ** 2)``, ``n1, n2`` from
  ``noise[b, slot]`` and ``noise[b, slot + 1]``;
- ``CONTRAST``: ``(v - m) * f + m`` with the channel's mean ``m`` in ``stats[b, c, 0]``, clamped
  to ``stats[b, c, 1:3]`` when ``numbers[b, k, 1]`` is 1.

Powers go through logarithms: a gamma is ``sign(v) exp(g log|v|)``, and a bias field followed by
a gamma ``sign(v) exp(g (log|v| + p))``. ``exp`` and ``log`` are the float32 polynomials of
Cephes (``expf``, ``logf``: relative error below ``1e-6``), written with integer bit operations so
that they vectorise; libm's would be called once per voxel.

Example
-------
>>> import numpy as np
>>> volume = np.full((1, 1, 2, 2, 2), 4.0, np.float32)
>>> codes = np.array([GAMMA, SHIFT])
>>> numbers = np.zeros((1, 2, 4)); numbers[0, 0, 0] = 0.5; numbers[0, 1, 0] = -1.0
>>> out = np.empty_like(volume)
>>> axes = np.zeros(2, np.float32)
>>> voxel_chain(volume, codes, np.ones((1, 2), np.uint8), numbers, np.zeros((1, 2, 1, 1, 1)), axes, axes, axes,
...             np.zeros((1, 1, 1, 2, 2, 2), np.float32), np.zeros(2, np.int64), np.zeros((1, 1, 3)), out)
>>> [round(float(v), 5) for v in out.ravel()[:2]]
[1.0, 1.0]
"""

from __future__ import annotations

import numba
import numpy as np

from .numba_threads import jit_pair

BIAS, GAMMA, SHIFT, NOISE, RICIAN, CONTRAST = range(6)
#: The step codes by name.
CODES = {"bias": BIAS, "gamma": GAMMA, "shift": SHIFT, "noise": NOISE, "rician": RICIAN, "contrast": CONTRAST}

_F = np.float32
_LN2 = _F(0.693147180559945)
_SQRT2 = _F(1.41421356)
_LOG_POLY = (_F(7.0376836292e-2), _F(-1.1514610310e-1), _F(1.1676998740e-1), _F(-1.2420140846e-1),
             _F(1.4249322787e-1), _F(-1.6668057665e-1), _F(2.0000714765e-1), _F(-2.4999993993e-1),
             _F(3.3333331174e-1))
_EXP_POLY = (_F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3), _F(4.1665795894e-2),
             _F(1.6666665459e-1), _F(5.0000001201e-1))


@numba.njit(cache=True)
def log_abs(src, dst, bits):  # pragma: no cover - compiled
    """``dst = log|src|`` (float32 rows; ``bits`` int32 scratch). ``log 0 = -88``-ish, times a 0 sign later."""
    raw = src.view(np.int32)
    mantissa = bits.view(np.float32)
    for x in range(src.shape[0]):
        b = raw[x] & 0x7FFFFFFF
        bits[x] = (b & 0x007FFFFF) | 0x3F800000  # the mantissa as a float in [1, 2)
        dst[x] = _F((b >> 23) - 127)  # the exponent
    for x in range(src.shape[0]):
        m, e = mantissa[x], dst[x]
        big = m > _SQRT2
        f = (_F(0.5) * m if big else m) - _F(1.0)  # in [sqrt(1/2) - 1, sqrt(2) - 1]
        e = e + _F(1.0) if big else e
        z = f * f
        y = _LOG_POLY[0]
        for c in _LOG_POLY[1:]:
            y = y * f + c
        value = f + (y * f * z - _F(0.5) * z) + e * _LN2
        magnitude = abs(src[x])
        dst[x] = magnitude if magnitude == np.inf or magnitude != magnitude else value


@numba.njit(cache=True)
def exp_into(src, dst, bits):  # pragma: no cover - compiled
    """``dst = exp(src)`` (float32 rows; ``bits`` int32 scratch): ``inf`` above 88.7, 0 below -87.3."""
    scale = bits.view(np.float32)
    for x in range(src.shape[0]):
        v = min(max(src[x], _F(-87.0)), _F(88.72))
        k = np.floor(v * _F(1.44269504088896341) + _F(0.5))
        r = (v - k * _F(0.693359375)) + k * _F(2.12194440e-4)
        p = _EXP_POLY[0]
        for c in _EXP_POLY[1:]:
            p = p * r + c
        dst[x] = p * r * r + r + _F(1.0)
        bits[x] = (np.int32(k) + 126) << 23  # 2 ** (k - 1): k reaches 128 below 88.72
    for x in range(src.shape[0]):
        v = src[x]
        value = dst[x] * scale[x] * _F(2.0)
        value = np.inf if v > _F(88.72) else (_F(0.0) if v < _F(-87.33) else value)
        dst[x] = v if v != v else value


def _sign_log(buf, sign, logs, bits):  # pragma: no cover - compiled
    """``sign = sign(buf)`` (NaN stays NaN), ``logs = log|buf|``: the row into the log domain."""
    for x in range(buf.shape[0]):
        v = buf[x]
        sign[x] = _F(1.0) if v > 0 else (_F(-1.0) if v < 0 else v)
    log_abs(buf, logs, bits)


def _voxel_chain(volume, codes, applied, numbers, cubes, u, v, w, noise, slots, stats, out):  # pragma: no cover
    """One pass of the chain over ``volume`` ``[B, C, D, H, W]`` (float32) into ``out`` (see the module).

    The parallel loop only hands out slices: its body is compiled once, as :func:`_chain_slice`
    (numba's parallel analysis of a large body takes long).
    """
    batch, depth = volume.shape[0], volume.shape[2]
    for bd in numba.prange(batch * depth):
        _chain_slice(bd // depth, bd % depth, volume, codes, applied, numbers, cubes, u, v, w, noise, slots, stats,
                     out)


def _chain_slice(b, d, volume, codes, applied, numbers, cubes, u, v, w, noise, slots, stats, out):  # pragma: no cover
    """The chain on slice ``d`` of sample ``b``."""
    channels, height, width = volume.shape[1], volume.shape[3], volume.shape[4]
    steps, size = codes.shape[0], cubes.shape[2]
    planes = np.zeros((steps, size, size))  # each bias cube contracted with u[d] ** i
    rows = np.zeros((steps, size), np.float32)  # ... and with v[h] ** j: a polynomial in w
    buf, sign, logs = np.empty(width, np.float32), np.empty(width, np.float32), np.empty(width, np.float32)
    field, bits = np.empty(width, np.float32), np.empty(width, np.int32)
    for k in range(steps):
        if codes[k] == BIAS and applied[b, k]:
            power = 1.0
            for i in range(size):
                planes[k] += cubes[b, k, i] * power
                power *= u[d]
    for h in range(height):
        _bias_rows(codes, applied[b], planes, v[h], rows)
        for c in range(channels):
            source = volume[b, c, d, h]
            for x in range(width):
                buf[x] = source[x]
            logged = False  # the row is sign * exp(logs), not buf
            for k in range(steps):
                if not applied[b, k]:
                    continue
                code = codes[k]
                if code == BIAS:
                    _polynomial(rows[k], w, field)
                    if not logged and k + 1 < steps and codes[k + 1] == GAMMA and applied[b, k + 1]:
                        _sign_log(buf, sign, logs, bits)
                        logged = True
                    if logged:
                        for x in range(width):
                            logs[x] += field[x]
                    else:
                        exp_into(field, sign, bits)
                        for x in range(width):
                            buf[x] *= sign[x]
                elif code == GAMMA:
                    if not logged:
                        _sign_log(buf, sign, logs, bits)
                        logged = True
                    gamma = _F(numbers[b, k, 0])
                    for x in range(width):
                        logs[x] *= gamma
                else:
                    if logged:
                        _from_logs(logs, sign, buf, bits)
                        logged = False
                    _linear_step(code, numbers[b, k], noise, b, slots[k], c, d, h, stats[b, c], buf, logs, sign)
            if logged:
                _from_logs(logs, sign, buf, bits)
            target = out[b, c, d, h]
            for x in range(width):
                target[x] = buf[x]


def _polynomial(coefficients, w, field):  # pragma: no cover - compiled
    """``field = sum_m coefficients[m] w ** m`` (Horner)."""
    top = coefficients.shape[0] - 1
    for x in range(w.shape[0]):
        field[x] = coefficients[top]
    for m in range(top - 1, -1, -1):
        c = coefficients[m]
        for x in range(w.shape[0]):
            field[x] = field[x] * w[x] + c


def _from_logs(logs, sign, buf, bits):  # pragma: no cover - compiled
    """``buf = sign * exp(logs)``: the row back from the log domain."""
    exp_into(logs, buf, bits)
    for x in range(buf.shape[0]):
        buf[x] *= sign[x]


def _linear_step(code, numbers, noise, b, slot, c, d, h, stats, buf, scratch_a, scratch_b):  # pragma: no cover
    """A shift, noise or contrast step on the row ``buf`` (the scratch rows are overwritten)."""
    p0, p1 = _F(numbers[0]), _F(numbers[1])
    width = buf.shape[0]
    if code == SHIFT:
        for x in range(width):
            buf[x] += p0
    elif code == NOISE:
        n = noise[b, slot, c, d, h]
        for x in range(width):
            buf[x] += p0 + p1 * n[x]
    elif code == RICIAN:
        n1, n2 = noise[b, slot, c, d, h], noise[b, slot + 1, c, d, h]
        for x in range(width):
            real = buf[x] + (p0 + p1 * n1[x])
            imaginary = p0 + p1 * n2[x]
            buf[x] = np.sqrt(real * real + imaginary * imaginary)
    else:  # CONTRAST
        mean, low, high = _F(stats[0]), _F(stats[1]), _F(stats[2])
        for x in range(width):
            value = (buf[x] - mean) * p0 + mean
            buf[x] = min(max(value, low), high) if numbers[1] == 1.0 else value


def _bias_rows(codes, applied, planes, v_h, rows):  # pragma: no cover - compiled
    """Each applied bias step's polynomial along the row: ``planes[k]`` contracted with ``v_h ** j``."""
    for k in range(codes.shape[0]):
        if codes[k] == BIAS and applied[k]:
            for m in range(planes.shape[2]):
                total = 0.0
                power = 1.0
                for j in range(planes.shape[1]):
                    total += planes[k, j, m] * power
                    power *= v_h
                rows[k, m] = total


_sign_log, _bias_rows, _polynomial, _from_logs, _linear_step, _chain_slice = (
    numba.njit(cache=True)(f) for f in (_sign_log, _bias_rows, _polynomial, _from_logs, _linear_step, _chain_slice))
voxel_chain, voxel_chain_serial = jit_pair(_voxel_chain)
