"""Exact median filter on batched volumes ``[B, C, D, H, W]`` with ``scipy.ndimage`` semantics.

:func:`median_filter` is exact (it returns one of the input values, bit for bit what
``scipy.ndimage.median_filter`` returns) and uses no sort: it evaluates a *comparator network*
made of elementwise ``minimum``/``maximum`` operations on whole slabs. The network is separable
in the spirit of Adams (2021): the ``2r+1`` values along W are sorted once per voxel and
shared by all windows, the sorted rows are merged along H into sorted ``(2r+1)^2`` lists
(Batcher's odd-even merge), and along D only the comparators that the median depends on are
kept. For a 3x3x3 window this costs 108 elementwise operations per voxel, for 5x5x5 about
990. The volume is processed in slabs along D so that the working memory stays within
``chunk_bytes`` whatever the radius.

References
----------
K. E. Batcher, "Sorting networks and their applications", AFIPS 1968.
A. Adams, "Fast median filters using separable sorting networks", ACM TOG 40(4), 2021.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .filters import _three_ints, pad_volume

#: The most values a median window may hold: 11 x 11 x 11 (radius 5). The comparator network
#: grows faster than the window (25,000 operations and 1,200 buffers of a plane for 11^3, built
#: in about a second); a radius of 50 would build it for minutes in many gigabytes first.
MAX_WINDOW = 11**3


def check_window(radii: tuple[int, int, int], name: str = "radius") -> None:
    """Refuse radii whose ``(2r+1)`` box holds more than :data:`MAX_WINDOW` values (before any work).

    Example
    -------
    >>> check_window((5, 5, 5))
    >>> check_window((6, 5, 5))
    Traceback (most recent call last):
    ...
    ValueError: radius (6, 5, 5) gives a median window of 13 x 11 x 11 = 1573 values; at most 1331 (11 x 11 x 11)
    """
    sides = [2 * r + 1 for r in radii]
    values = sides[0] * sides[1] * sides[2]
    if values > MAX_WINDOW:
        raise ValueError(
            f"{name} {tuple(radii)} gives a median window of {' x '.join(map(str, sides))} = {values} values; "
            f"at most {MAX_WINDOW} (11 x 11 x 11)"
        )


def median_filter(
    x: torch.Tensor,
    radius: Any,
    mode: str = "reflect",
    cval: float = 0.0,
    chunk_bytes: int = 128 * 2**20,
) -> torch.Tensor:
    """Exact median over a ``(2r+1)``-sided box, as ``scipy.ndimage.median_filter(size=2r+1)``.

    Parameters
    ----------
    x:
        Volume ``[B, C, D, H, W]`` of any real dtype (labels included: the result is always one of
        the input values).
    radius:
        Half-width in voxels: one integer or one per spatial axis ``(rD, rH, rW)``; the window
        may hold at most :data:`MAX_WINDOW` values (radius 5 on every axis).
    mode, cval:
        Boundary handling, see :func:`pad_volume`; scipy's default is ``'reflect'``.
    chunk_bytes:
        Working-memory budget: the volume is processed in slabs along D small enough that the
        comparator network's buffers fit (at least one plane at a time). NaNs propagate to
        every window that contains them.

    Reference
    ---------
    ``scipy.ndimage.median_filter(volume, size=2 * r + 1, mode=mode)`` per ``[D, H, W]`` volume;
    the result is bit-identical.

    Example
    -------
    >>> x = torch.zeros(1, 1, 5, 5, 5); x[0, 0, 2, 2, 2] = 100.0   # an outlier
    >>> float(median_filter(x, 1).abs().max())
    0.0
    """
    radii = _three_ints(radius, "radius", minimum=0)
    check_window(radii)
    if x.ndim != 5:
        raise ValueError(f"median_filter: x must be [B, C, D, H, W], got shape {tuple(x.shape)}")
    if all(r == 0 for r in radii):
        return x.clone()
    rd, rh, rw = radii
    sort_w, merge_h, select_d = _median_programs(2 * rd + 1, 2 * rh + 1, 2 * rw + 1)
    batch, channels, depth, height, width = x.shape
    flat = x.reshape(batch * channels, depth, height, width)
    padded = pad_volume(flat, [(rd, rd), (rh, rh), (rw, rw)], mode, cval)
    n = flat.shape[0]
    # bytes per plane of the buffers of the three stages; W and H also need 2*rd halo planes
    plane = n * x.element_size()
    halo_stages = plane * (sort_w.n_registers * (height + 2 * rh) * width + merge_h.n_registers * height * width)
    last_stage = plane * select_d.n_registers * height * width
    chunk = int((chunk_bytes - 2 * rd * halo_stages) // max(halo_stages + last_stage, 1))
    chunk = max(1, min(depth, chunk))
    out = torch.empty_like(flat)
    # buffers are allocated once and reused by every slab (fresh allocations page-fault on the CPU)
    pools = [
        program.allocate(flat, (n, chunk + halo, rows, cols))
        for program, halo, rows, cols in (
            (sort_w, 2 * rd, height + 2 * rh, width),
            (merge_h, 2 * rd, height, width),
            (select_d, 0, height, width),
        )
    ]
    for start in range(0, depth, chunk):
        size = min(chunk, depth - start)
        block = padded[:, start : start + size + 2 * rd]
        rows = sort_w.run([block[..., c : c + width] for c in range(2 * rw + 1)], pools[0])
        lists = merge_h.run([row[:, :, b : b + height, :] for b in range(2 * rh + 1) for row in rows], pools[1])
        inputs = [lst[:, a : a + size] for a in range(2 * rd + 1) for lst in lists]
        (median,) = select_d.run(inputs, pools[2])
        out[:, start : start + size] = median
    return out.view_as(x)


class _Program:
    """A straight-line program of elementwise min/max ops with registers assigned."""

    def __init__(self, n_inputs: int, ops: list[tuple[bool, int, int, int]], outputs: list[int]):
        self.n_inputs = n_inputs
        last_use: dict[int, int] = {}
        for position, (_, _, a, b) in enumerate(ops):
            last_use[a] = position
            last_use[b] = position
        for value in outputs:
            last_use[value] = len(ops)
        register: dict[int, int] = {}
        free: list[int] = []
        compiled = []
        n_registers = 0
        for position, (is_min, dst, a, b) in enumerate(ops):
            for operand in {a, b}:
                if operand >= n_inputs and last_use[operand] == position:
                    free.append(register[operand])
            if free:
                slot = free.pop()
            else:
                slot, n_registers = n_registers, n_registers + 1
            register[dst] = slot
            compiled.append((is_min, slot, self._ref(a, register), self._ref(b, register)))
        self.ops = compiled
        self.outputs = [self._ref(v, register) for v in outputs]
        self.n_registers = n_registers

    def _ref(self, value: int, register: dict[int, int]) -> int:
        return value if value < self.n_inputs else self.n_inputs + register[value]

    def allocate(self, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
        """Register storage for inputs of up to ``shape`` (dtype and device of ``like``)."""
        return like.new_empty((self.n_registers, *shape)) if self.n_registers else None

    def run(self, inputs: list[torch.Tensor], pool: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Evaluate on equally shaped tensors (views are fine; they are never written).

        ``pool`` is storage from :meth:`allocate` for a shape at least as large as the inputs'.
        """
        shape = inputs[0].shape
        registers: list[torch.Tensor] = []
        if self.n_registers:
            if pool is None:
                pool = self.allocate(inputs[0], tuple(shape))
            assert pool is not None  # allocate makes storage whenever there are registers
            registers = list(pool[(slice(None), *(slice(0, s) for s in shape))].unbind(0))
        values = [*inputs, *registers]
        for is_min, slot, a, b in self.ops:
            (torch.minimum if is_min else torch.maximum)(values[a], values[b], out=values[self.n_inputs + slot])
        return [values[r] for r in self.outputs]


class _NetworkBuilder:
    """Builds comparator networks in SSA form: inputs are values ``0..n-1``."""

    def __init__(self, n_inputs: int):
        self.n_inputs = n_inputs
        self.n_values = n_inputs
        self.ops: list[tuple[bool, int, int, int]] = []

    def _emit(self, is_min: bool, a: int, b: int) -> int:
        self.ops.append((is_min, self.n_values, a, b))
        self.n_values += 1
        return self.n_values - 1

    def compare_exchange(self, a: int, b: int) -> tuple[int, int]:
        return self._emit(True, a, b), self._emit(False, a, b)

    def merge(self, a: list[int], b: list[int]) -> list[int]:
        """Batcher's odd-even merge of two sorted lists of any lengths."""
        if not a or not b:
            return list(a or b)
        if len(a) == 1 and len(b) == 1:
            return list(self.compare_exchange(a[0], b[0]))
        evens = self.merge(a[0::2], b[0::2])
        odds = self.merge(a[1::2], b[1::2])
        out = [evens[0]]
        pairs = min(len(odds), len(evens) - 1)
        for i in range(pairs):
            out += self.compare_exchange(odds[i], evens[i + 1])
        return out + odds[pairs:] + evens[pairs + 1 :]

    def sort(self, a: list[int]) -> list[int]:
        if len(a) <= 1:
            return list(a)
        half = len(a) // 2
        return self.merge(self.sort(a[:half]), self.sort(a[half:]))

    def merge_all(self, lists: list[list[int]]) -> list[int]:
        pending = [list(x) for x in lists]
        while len(pending) > 1:
            pending.sort(key=len)
            pending.append(self.merge(pending.pop(0), pending.pop(0)))
        return pending[0]

    def select_from_two(self, a: list[int], b: list[int], rank: int) -> int:
        """Element of ``rank`` (0-based) of two sorted lists: min over i+j=rank-1 of max(a_i, b_j)."""
        terms = []
        for i in range(-1, rank + 1):
            j = rank - 1 - i
            if i >= len(a) or j >= len(b):
                continue  # that term is +inf
            if i < 0:
                terms.append(b[j])
            elif j < 0:
                terms.append(a[i])
            else:
                terms.append(self._emit(False, a[i], b[j]))
        result = terms[0]
        for term in terms[1:]:
            result = self._emit(True, result, term)
        return result

    def program(self, outputs: list[int]) -> _Program:
        live = set(outputs)
        kept = []
        for op in reversed(self.ops):
            if op[1] in live:
                kept.append(op)
                live.update(op[2:])
        return _Program(self.n_inputs, kept[::-1], outputs)


@functools.lru_cache(maxsize=32)
def _median_programs(kd: int, kh: int, kw: int) -> tuple[_Program, _Program, _Program]:
    """The three stages: sort along W, merge rows along H, select the median along D."""
    sort_w = _NetworkBuilder(kw)
    sort_w_program = sort_w.program(sort_w.sort(list(range(kw))))
    merge_h = _NetworkBuilder(kh * kw)
    rows = [list(range(b * kw, (b + 1) * kw)) for b in range(kh)]
    merge_h_program = merge_h.program(merge_h.merge_all(rows))
    plane = kh * kw
    total = kd * plane
    select_d = _NetworkBuilder(total)
    planes = [list(range(a * plane, (a + 1) * plane)) for a in range(kd)]
    if kd == 1:
        median = planes[0][total // 2]
    else:
        median = select_d.select_from_two(select_d.merge_all(planes[:-1]), planes[-1], total // 2)
    return sort_w_program, merge_h_program, select_d.program([median])


# -- helpers -------------------------------------------------------------------------------


