"""The numba kernels of :mod:`gpuprep.functional.fused_sampler` (CPU; imported only when numba is).

Each output voxel's source coordinate is computed from its sample's map on the fly (no grid
tensor) and the input is read there, in parallel over ``(sample, output slice)``. Two rules,
each reproducing a torch path of :mod:`gpuprep.functional.resample_general` operation for
operation (same formulas, same order, same precision), so that nearest neighbour is bit-exact:

- the **grid rule** (:func:`grid_linear`, :func:`grid_nearest`, :func:`grid_linear_with_labels`) is
  ``general_batched``: the normalised ``affine_grid`` coordinate ``((r2 z + r3) + r1 y) + r0 x``
  in the grid's dtype ``T``, ``inside_grid``'s mask, ``grid_sample``'s unnormalisation ``((g + 1) / 2) (n - 1)`` with
  ``"border"`` clamping, and its trilinear weights or ``nearbyint`` (ties to even);
- the **voxel rule** (:func:`voxel_nearest`) is ``nearest_general``: float64 voxel coordinates,
  ``floor(c + 0.5 + 1e-9)`` (ties up) and ``_inside_mask``'s half-voxel test.

The three grid kernels share their loops on purpose: :func:`grid_linear_with_labels` alone could
serve an image or labels alone (given no channels of the other), but measured 15-40 % slower
there (its per-voxel work for the missing one), so each common case keeps its own kernel.

Outside the input under ``"zeros"`` the kernels write ``fill[b, c]``. Nearest neighbour copies
values, so callers pass any dtype viewed as an integer of its size. Each kernel also comes
compiled without threads (``*_serial``; see :mod:`gpuprep.functional.numba_threads`).

Example
-------
>>> import numpy as np
>>> volume = np.arange(8, dtype=np.uint8).reshape(1, 1, 2, 2, 2)
>>> maps = np.eye(4)[None, :3]
>>> out = np.empty_like(volume)
>>> bounds = np.array([-0.5 - 1e-9, 1.5 + 1e-9, 1.5 + 1e-9, 1.5 + 1e-9, 0.5 + 1e-9])  # 2 voxels per axis
>>> voxel_nearest(volume, maps, bounds, True, np.zeros((1, 1), np.uint8), out)
>>> bool((out == volume).all())
True
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.extending import overload

from .numba_threads import jit_pair


def _as_float_like(value, like):
    """``value`` as a float of ``like``'s type (compiled by the overload below)."""
    return type(like)(value)


def _round_half_even(x):
    """``nearbyint(x)`` (ties to even) of ``0 <= x < 2 ** 23``, in ``x``'s type, without a libm call."""
    return np.rint(x)


@overload(_as_float_like)
def _as_float_like_compiled(value, like):
    if like == types.float32:
        return lambda value, like: np.float32(value)
    return lambda value, like: np.float64(value)


@overload(_round_half_even)
def _round_half_even_compiled(x):
    # Adding 2 ** 23 (float32) or 2 ** 52 (float64) leaves no fraction bits: the sum is rounded to an
    # integer, ties to even (IEEE's default), exactly as nearbyint; subtracting it back is exact.
    magic = np.float32(2.0**23) if x == types.float32 else 2.0**52
    return lambda x: (x + magic) - magic


def _grid_linear(volume, theta, ax, ay, az, consts, zeros, fill, out):  # pragma: no cover - compiled
    """Trilinear ``grid_sample`` (``align_corners=True``, border) with ``inside_grid``'s zeros.

    ``theta`` ``[B, 3, 4]``, ``ax``/``ay``/``az`` (the output's normalised W, H, D axes) and
    ``consts`` (``[1, 2, thr_w, thr_h, thr_d, n_w - 1, n_h - 1, n_d - 1, 0]``) share the dtype of
    the computation, which is the volume's. Flat unsigned indices: no negative-index checks.
    """
    batch, channels, in_d, in_h, in_w = volume.shape
    out_d, out_h, out_w = out.shape[2:]
    src, dst = volume.reshape(-1), out.reshape(-1)
    plane, in_size, out_size = np.uint64(in_h * in_w), in_d * in_h * in_w, out_d * out_h * out_w
    one, two, zero = consts[0], consts[1], consts[8]
    # ((g + 1) / 2) (n - 1) == (g + 1) ((n - 1) / 2) bit for bit (halving is exact): no division per voxel.
    sw, sh, sd = consts[5] / two, consts[6] / two, consts[7] / two
    for bd in numba.prange(batch * out_d):
        b, d = bd // out_d, bd % out_d
        t = theta[b]
        a0, a1, a2 = t[0, 2] * az[d] + t[0, 3], t[1, 2] * az[d] + t[1, 3], t[2, 2] * az[d] + t[2, 3]
        for h in range(out_h):
            b0, b1, b2 = a0 + t[0, 1] * ay[h], a1 + t[1, 1] * ay[h], a2 + t[2, 1] * ay[h]
            row = (b * channels * out_d + d) * out_h * out_w + h * out_w
            for w in range(out_w):
                g0, g1, g2 = b0 + t[0, 0] * ax[w], b1 + t[1, 0] * ax[w], b2 + t[2, 0] * ax[w]
                if zeros and not (abs(g0) <= consts[2] and abs(g1) <= consts[3] and abs(g2) <= consts[4]):
                    for c in range(channels):
                        dst[row + c * out_size + w] = fill[b, c]
                    continue
                ix = min(consts[5], max((g0 + one) * sw, zero))
                iy = min(consts[6], max((g1 + one) * sh, zero))
                iz = min(consts[7], max((g2 + one) * sd, zero))
                x0, y0, z0 = np.int64(ix), np.int64(iy), np.int64(iz)  # floor: the coordinates are >= 0
                fx, fy, fz = _as_float_like(x0, ix), _as_float_like(y0, iy), _as_float_like(z0, iz)
                x0, y0, z0 = np.uint64(x0), np.uint64(y0), np.uint64(z0)
                # The upper corner's offset; 0 at the last voxel, where its weight is 0 (torch skips it).
                dx = np.uint64(1) if x0 + 1 < in_w else np.uint64(0)
                dy = np.uint64(in_w) if y0 + 1 < in_h else np.uint64(0)
                dz = plane if z0 + 1 < in_d else np.uint64(0)
                hx, hy, hz = ix - fx, iy - fy, iz - fz  # weights of the upper corners
                lx, ly, lz = fx + one - ix, fy + one - iy, fz + one - iz
                for c in range(channels):
                    p = np.uint64((b * channels + c) * in_size) + z0 * plane + y0 * np.uint64(in_w) + x0
                    dst[row + c * out_size + w] = (
                        src[p] * (lx * ly * lz) + src[p + dx] * (hx * ly * lz)
                        + src[p + dy] * (lx * hy * lz) + src[p + dy + dx] * (hx * hy * lz)
                        + src[p + dz] * (lx * ly * hz) + src[p + dz + dx] * (hx * ly * hz)
                        + src[p + dz + dy] * (lx * hy * hz) + src[p + dz + dy + dx] * (hx * hy * hz)
                    )


def _grid_linear_with_labels(volume, labels, theta, ax, ay, az, consts, zeros, fill,  # pragma: no cover
                             warped, rows, first, taps, linear, onehot, out, labels_out):
    """:func:`grid_linear` of ``volume`` and :func:`grid_nearest` of ``labels`` (bits, padded with 0) in one pass.

    Both read the input at the same points: the labels at the rounded (``nearbyint``) coordinates
    of the trilinear ones, as ``grid_nearest`` rounds them. Either may have no channels. With
    ``onehot`` the labels are ``resample_labels``'s instead (see :func:`_onehot_label`).

    With ``warped``, each point also moves by the displacement ``u`` (voxels of the output grid,
    which is the warp's) times ``linear`` ``[B, 3, 3]`` (the map before the warp in normalised
    units), as ``functional.warp.warp_grid`` adds it: component ``2 - i`` of the point gains
    ``(l[i, 0] u0 + l[i, 1] u1) + l[i, 2] u2``. ``u`` is evaluated here, as
    ``functional.elastic.rows_to_field`` evaluates it, from the B-spline ``rows``
    ``[B, 3, D, H, nW]`` and the W taps (``first`` ``[W]``, ``taps`` ``[W, 4]``): no dense field.
    """
    batch, channels, in_d, in_h, in_w = volume.shape
    out_d, out_h, out_w = out.shape[2:]
    src, dst = volume.reshape(-1), out.reshape(-1)
    label_src, label_dst, label_channels = labels.reshape(-1), labels_out.reshape(-1), labels.shape[1]
    plane, in_size, out_size = np.uint64(in_h * in_w), in_d * in_h * in_w, out_d * out_h * out_w
    one, two, zero = consts[0], consts[1], consts[8]
    sw, sh, sd = consts[5] / two, consts[6] / two, consts[7] / two
    for bd in numba.prange(batch * out_d):
        b, d = bd // out_d, bd % out_d
        t = theta[b]
        a0, a1, a2 = t[0, 2] * az[d] + t[0, 3], t[1, 2] * az[d] + t[1, 3], t[2, 2] * az[d] + t[2, 3]
        for h in range(out_h):
            b0, b1, b2 = a0 + t[0, 1] * ay[h], a1 + t[1, 1] * ay[h], a2 + t[2, 1] * ay[h]
            row = (b * channels * out_d + d) * out_h * out_w + h * out_w
            label_row = (b * label_channels * out_d + d) * out_h * out_w + h * out_w
            field_row = rows[b, :, d, h] if warped else rows[0, :, 0, 0]  # this image row's B-spline rows
            for w in range(out_w):
                g0, g1, g2 = b0 + t[0, 0] * ax[w], b1 + t[1, 0] * ax[w], b2 + t[2, 0] * ax[w]
                if warped:
                    u0, u1, u2 = _displacement(field_row, first[w], taps[w])
                    g0 += (linear[b, 2, 0] * u0 + linear[b, 2, 1] * u1) + linear[b, 2, 2] * u2
                    g1 += (linear[b, 1, 0] * u0 + linear[b, 1, 1] * u1) + linear[b, 1, 2] * u2
                    g2 += (linear[b, 0, 0] * u0 + linear[b, 0, 1] * u1) + linear[b, 0, 2] * u2
                if zeros and not (abs(g0) <= consts[2] and abs(g1) <= consts[3] and abs(g2) <= consts[4]):
                    for c in range(channels):
                        dst[row + c * out_size + w] = fill[b, c]
                    for c in range(label_channels):
                        label_dst[label_row + c * out_size + w] = 0
                    continue
                ix = min(consts[5], max((g0 + one) * sw, zero))
                iy = min(consts[6], max((g1 + one) * sh, zero))
                iz = min(consts[7], max((g2 + one) * sd, zero))
                if not onehot:
                    nearest = (np.uint64(np.int64(_round_half_even(iz))) * plane
                               + np.uint64(np.int64(_round_half_even(iy))) * np.uint64(in_w)
                               + np.uint64(np.int64(_round_half_even(ix))))
                    _copy_channels(label_src, label_dst, np.uint64(b * label_channels * in_size) + nearest,
                                   label_row + w, label_channels, in_size, out_size)
                x0, y0, z0 = np.int64(ix), np.int64(iy), np.int64(iz)  # floor: the coordinates are >= 0
                fx, fy, fz = _as_float_like(x0, ix), _as_float_like(y0, iy), _as_float_like(z0, iz)
                x0, y0, z0 = np.uint64(x0), np.uint64(y0), np.uint64(z0)
                # The upper corner's offset; 0 at the last voxel, where its weight is 0 (torch skips it).
                dx = np.uint64(1) if x0 + 1 < in_w else np.uint64(0)
                dy = np.uint64(in_w) if y0 + 1 < in_h else np.uint64(0)
                dz = plane if z0 + 1 < in_d else np.uint64(0)
                hx, hy, hz = ix - fx, iy - fy, iz - fz  # weights of the upper corners
                lx, ly, lz = fx + one - ix, fy + one - iy, fz + one - iz
                weights = (lx * ly * lz, hx * ly * lz, lx * hy * lz, hx * hy * lz,
                           lx * ly * hz, hx * ly * hz, lx * hy * hz, hx * hy * hz)
                corner = z0 * plane + y0 * np.uint64(in_w) + x0
                offsets = (np.uint64(0), dx, dy, dy + dx, dz, dz + dx, dz + dy, dz + dy + dx)
                for c in range(channels):
                    p = np.uint64((b * channels + c) * in_size) + corner
                    dst[row + c * out_size + w] = _trilinear(src, p, offsets, weights)
                if onehot:
                    for c in range(label_channels):
                        p = np.uint64((b * label_channels + c) * in_size) + corner
                        label_dst[label_row + c * out_size + w] = _onehot_label(label_src, p, offsets, weights, zero)


def _trilinear(src, p, offsets, weights):  # pragma: no cover - compiled
    """The eight corners from ``p`` weighted and summed in ``grid_linear``'s order."""
    return (src[p] * weights[0] + src[p + offsets[1]] * weights[1]
            + src[p + offsets[2]] * weights[2] + src[p + offsets[3]] * weights[3]
            + src[p + offsets[4]] * weights[4] + src[p + offsets[5]] * weights[5]
            + src[p + offsets[6]] * weights[6] + src[p + offsets[7]] * weights[7])


def _displacement(rows, first, taps):  # pragma: no cover - compiled
    """The three components of a B-spline displacement at one voxel, as ``elastic.rows_to_field`` sums them.

    ``rows`` ``[3, nW]`` is the voxel's image row of ``bspline_rows``; ``first`` and ``taps`` its W taps.
    """
    r, f = rows[0], first
    u0 = ((r[f] * taps[0] + r[f + 1] * taps[1]) + r[f + 2] * taps[2]) + r[f + 3] * taps[3]
    r = rows[1]
    u1 = ((r[f] * taps[0] + r[f + 1] * taps[1]) + r[f + 2] * taps[2]) + r[f + 3] * taps[3]
    r = rows[2]
    u2 = ((r[f] * taps[0] + r[f + 1] * taps[1]) + r[f + 2] * taps[2]) + r[f + 3] * taps[3]
    return u0, u1, u2


def _copy_channels(source, target, start, row, channels, in_size, out_size):  # pragma: no cover - compiled
    """Copy one voxel of every channel: ``target[row + c * out_size] = source[start + c * in_size]``."""
    for c in range(channels):
        target[row + c * out_size] = source[start + np.uint64(c * in_size)]


def _onehot_label(labels, p, offsets, weights, zero):  # pragma: no cover - compiled
    """``resample_labels``'s label at a point: each label's one-hot mask interpolated, then the argmax.

    A label's score is the sum of the trilinear weights of the corners holding it, added in corner
    order as ``grid_linear`` adds the mask's eight terms (a corner of another label adds an exact 0);
    the highest score wins, ties going to the smaller label (``resample_labels`` visits the labels in
    ascending order and keeps the first maximum), and 0 where no label has weight.
    """
    best_score, best_label = zero, labels[p] - labels[p]  # 0 in the labels' type
    for i in range(8):
        label = labels[p + offsets[i]]
        score = zero
        for k in range(8):
            if labels[p + offsets[k]] == label:
                score += weights[k]
        if score > best_score or (score == best_score and score > zero and label < best_label):
            best_score, best_label = score, label
    return best_label


_onehot_label = numba.njit(cache=True)(_onehot_label)
# Inlined by numba: called per voxel, they must cost nothing beyond their arithmetic.
_displacement, _copy_channels, _trilinear = (numba.njit(cache=True, inline="always")(f) for f in (
    _displacement, _copy_channels, _trilinear))


def _grid_nearest(volume, theta, ax, ay, az, consts, zeros, fill, out):  # pragma: no cover - compiled
    """Nearest ``grid_sample`` (``nearbyint``: ties to even) with ``inside_grid``'s zeros; as ``grid_linear``."""
    batch, channels, in_d, in_h, in_w = volume.shape
    out_d, out_h, out_w = out.shape[2:]
    src, dst = volume.reshape(-1), out.reshape(-1)
    plane, in_size, out_size = np.uint64(in_h * in_w), in_d * in_h * in_w, out_d * out_h * out_w
    one, two, zero = consts[0], consts[1], consts[8]
    sw, sh, sd = consts[5] / two, consts[6] / two, consts[7] / two  # as in grid_linear
    for bd in numba.prange(batch * out_d):
        b, d = bd // out_d, bd % out_d
        t = theta[b]
        a0, a1, a2 = t[0, 2] * az[d] + t[0, 3], t[1, 2] * az[d] + t[1, 3], t[2, 2] * az[d] + t[2, 3]
        for h in range(out_h):
            b0, b1, b2 = a0 + t[0, 1] * ay[h], a1 + t[1, 1] * ay[h], a2 + t[2, 1] * ay[h]
            row = (b * channels * out_d + d) * out_h * out_w + h * out_w
            for w in range(out_w):
                g0, g1, g2 = b0 + t[0, 0] * ax[w], b1 + t[1, 0] * ax[w], b2 + t[2, 0] * ax[w]
                if zeros and not (abs(g0) <= consts[2] and abs(g1) <= consts[3] and abs(g2) <= consts[4]):
                    for c in range(channels):
                        dst[row + c * out_size + w] = fill[b, c]
                    continue
                x = np.uint64(np.int64(_round_half_even(min(consts[5], max((g0 + one) * sw, zero)))))
                y = np.uint64(np.int64(_round_half_even(min(consts[6], max((g1 + one) * sh, zero)))))
                z = np.uint64(np.int64(_round_half_even(min(consts[7], max((g2 + one) * sd, zero)))))
                p = np.uint64(b * channels * in_size) + z * plane + y * np.uint64(in_w) + x
                for c in range(channels):
                    dst[row + c * out_size + w] = src[p + np.uint64(c * in_size)]


def _voxel_nearest(volume, maps, bounds, zeros, fill, out):  # pragma: no cover - compiled
    """``nearest_general`` with one map per sample: ``maps`` ``[B, 3, 4]`` float64.

    ``bounds`` is ``[low, high_d, high_h, high_w, half]``: the inside test ``low <= c <= high``
    and the rounding offset ``0.5 + 1e-9``.
    """
    batch, channels, in_d, in_h, in_w = volume.shape
    out_d, out_h, out_w = out.shape[2:]
    half = bounds[4]
    for bd in numba.prange(batch * out_d):
        b, d = bd // out_d, bd % out_d
        m = maps[b]
        fd = float(d)
        p0, p1, p2 = m[0, 0] * fd, m[1, 0] * fd, m[2, 0] * fd  # the mask sums from 0, the index from row[3]
        for h in range(out_h):
            fh = float(h)
            q0, q1, q2 = (m[0, 3] + p0) + m[0, 1] * fh, (m[1, 3] + p1) + m[1, 1] * fh, (m[2, 3] + p2) + m[2, 1] * fh
            r0, r1, r2 = p0 + m[0, 1] * fh, p1 + m[1, 1] * fh, p2 + m[2, 1] * fh
            for w in range(out_w):
                fw = float(w)
                if zeros:
                    c0 = m[0, 3] + (r0 + m[0, 2] * fw)
                    c1 = m[1, 3] + (r1 + m[1, 2] * fw)
                    c2 = m[2, 3] + (r2 + m[2, 2] * fw)
                    if not (bounds[0] <= c0 <= bounds[1] and bounds[0] <= c1 <= bounds[2]
                            and bounds[0] <= c2 <= bounds[3]):
                        for c in range(channels):
                            out[b, c, d, h, w] = fill[b, c]
                        continue
                z = min(max(int(np.floor(q0 + m[0, 2] * fw + half)), 0), in_d - 1)
                y = min(max(int(np.floor(q1 + m[1, 2] * fw + half)), 0), in_h - 1)
                x = min(max(int(np.floor(q2 + m[2, 2] * fw + half)), 0), in_w - 1)
                for c in range(channels):
                    out[b, c, d, h, w] = volume[b, c, z, y, x]


grid_linear, grid_linear_serial = jit_pair(_grid_linear)
grid_nearest, grid_nearest_serial = jit_pair(_grid_nearest)
grid_linear_with_labels, grid_linear_with_labels_serial = jit_pair(_grid_linear_with_labels)
voxel_nearest, voxel_nearest_serial = jit_pair(_voxel_nearest)
