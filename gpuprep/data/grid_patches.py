"""Patches on a regular grid and their blending: :class:`GridPatches`, :class:`PatchAggregator`.

The grid is MONAI's (``monai.data.utils.dense_patch_slices`` as used by its
``sliding_window_inference``): an axis shorter than the window is padded to the window
(``diff // 2`` voxels before, the rest after); windows step by ``int(size * (1 - overlap))``
voxels (at least 1) and the last window of an axis is moved back so it ends flush with the
(padded) volume. Corners are given in the voxel coordinates of the *unpadded* volume, so a
corner is negative (or a window runs past the end) exactly where padding is needed.

The aggregator adds predictions ``[N, C, *size]`` at their corners, each weighted by an
importance map (constant, or MONAI's Gaussian ``exp(-x^2 / (2 (sigma_scale * size)^2))`` per
axis, clamped below at ``max(min, 1e-3)``), and divides by the summed weights. Parts of a
window that fall outside the volume (padding) are dropped; as the division is voxel-wise this
equals MONAI's pad-blend-crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, TransformError

__all__ = ["BLEND_MODES", "PADDING_MODES", "GridPatches", "PatchAggregator", "extract_patches", "importance_map"]

PADDING_MODES = ("constant", "reflect", "replicate", "circular")
BLEND_MODES = ("constant", "gaussian")

Corner = tuple[int, int, int]


def _three(value, name: str, owner: str, check, rule: str) -> tuple:
    values = (value,) * 3 if not isinstance(value, Sequence) or isinstance(value, str) else tuple(value)
    if len(values) != 3 or not all(check(v) for v in values):
        raise ConfigError(f"{owner}: {name} must be {rule} or three of them, got {value!r}")
    return values


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class GridPatches:
    """Windows of a fixed size covering a volume, with overlap, last window flush with the end.

    Parameters
    ----------
    size:
        Window shape ``(d, h, w)`` or one int for a cube; ``None`` or a non-positive entry takes
        the volume's full extent along that axis (as MONAI's ``roi_size``).
    overlap:
        Fraction in ``[0, 1)`` of a window shared with its neighbour, one value or one per axis.
    padding_mode:
        How axes shorter than the window are padded: ``"constant"`` (with ``cval``),
        ``"reflect"``, ``"replicate"`` or ``"circular"`` (``torch.nn.functional.pad``).
    cval:
        Fill value of constant padding.

    Example
    -------
    >>> grid = GridPatches((4, 4, 4), overlap=0.5)
    >>> grid.corners((6, 4, 3))
    [(0, 0, 0), (2, 0, 0)]
    >>> grid.extract(torch.zeros(1, 6, 4, 3), grid.corners((6, 4, 3))).shape
    torch.Size([2, 1, 4, 4, 4])
    """

    def __init__(
        self,
        size: int | Sequence[int | None],
        overlap: float | Sequence[float] = 0.5,
        padding_mode: str = "constant",
        cval: float = 0.0,
    ) -> None:
        name = type(self).__name__
        self.size = _three(size, "size", name, lambda v: v is None or _is_int(v), "an int (or None)")
        self.overlap = _three(overlap, "overlap", name, lambda v: _is_number(v) and 0 <= v < 1,
                              "a number in [0, 1)")
        if padding_mode not in PADDING_MODES:
            raise ConfigError(f"{name}: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if not _is_number(cval):
            raise ConfigError(f"{name}: cval must be a number, got {cval!r}")
        self.padding_mode = padding_mode
        self.cval = float(cval)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, overlap={self.overlap}, "
                f"padding_mode={self.padding_mode!r}, cval={self.cval})")

    def window(self, shape: Sequence[int]) -> Corner:
        """The window shape for a volume of spatial ``shape`` (``None``/non-positive entries filled in)."""
        shape = _spatial(shape)
        return tuple(n if s is None or s <= 0 else s for s, n in zip(self.size, shape))  # type: ignore[return-value]

    def padding(self, shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """Per axis, the voxels ``(before, after)`` padded so the volume is at least one window."""
        pads = []
        for s, n in zip(self.window(shape), _spatial(shape)):
            diff = max(s - n, 0)
            pads.append((diff // 2, diff - diff // 2))
        return tuple(pads)

    def intervals(self, shape: Sequence[int]) -> Corner:
        """The step between window corners along each axis (MONAI's scan interval)."""
        intervals = []
        for s, n, o in zip(self.window(shape), _spatial(shape), self.overlap):
            padded = max(n, s)
            intervals.append(s if s == padded else max(int(s * (1 - o)), 1))
        return tuple(intervals)  # type: ignore[return-value]

    def corners(self, shape: Sequence[int]) -> list[Corner]:
        """Window corners in the volume's voxel coordinates, in C order (last axis fastest)."""
        shape = _spatial(shape)
        window, pads = self.window(shape), self.padding(shape)
        per_axis = []
        for s, n, step, (before, _) in zip(window, shape, self.intervals(shape), pads):
            padded = max(n, s)
            count = 1
            while (count - 1) * step + s < padded:
                count += 1
            per_axis.append([min(i * step, padded - s) - before for i in range(count)])
        return [(a, b, c) for a in per_axis[0] for b in per_axis[1] for c in per_axis[2]]

    def extract(self, volume: torch.Tensor, corners: Sequence[Sequence[int]],
                sources: Sequence[int] | None = None) -> torch.Tensor:
        """Cut the windows at ``corners`` out of ``volume``, padding where they leave it.

        Parameters
        ----------
        volume:
            ``[C, D, H, W]`` or a batch ``[B, C, D, H, W]``.
        corners:
            Window corners (from :meth:`corners`, or any others).
        sources:
            For a batch, the sample of each corner; default: every corner of every sample,
            sample-major.

        Returns
        -------
        torch.Tensor
            ``[N, C, *window]`` on the volume's device, with its dtype.
        """
        batch = _as_batch(volume, "GridPatches.extract")
        corners = [tuple(int(c) for c in corner) for corner in corners]
        if sources is None:
            sources = [b for b in range(batch.shape[0]) for _ in corners]
            corners = corners * batch.shape[0]
        elif volume.ndim == 4:
            raise TransformError("GridPatches.extract: sources are for a batch [B, C, D, H, W]; got one volume")
        return extract_patches(batch, sources, corners, self.window(batch.shape[-3:]), self.padding_mode, self.cval)


def extract_patches(
    volume: torch.Tensor,
    sources: Sequence[int],
    corners: Sequence[Sequence[int]],
    size: Sequence[int],
    padding_mode: str = "constant",
    cval: float = 0.0,
) -> torch.Tensor:
    """Patches ``[N, C, *size]`` of a batch ``[B, C, D, H, W]`` at (sample, corner) pairs.

    Voxels outside the volume are filled by ``padding_mode`` (``torch.nn.functional.pad``
    semantics). Slicing uses host integers only, so no data leave the device.

    Example
    -------
    >>> x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    >>> extract_patches(x, [0], [(1, -1, 0)], (1, 2, 2))[0, 0].tolist()
    [[[0.0, 0.0], [4.0, 5.0]]]
    """
    if len(sources) != len(corners):
        raise TransformError(f"extract_patches: got {len(sources)} sources for {len(corners)} corners")
    batch_size, shape = volume.shape[0], tuple(volume.shape[-3:])
    pieces = []
    for source, corner in zip(sources, corners):
        if not 0 <= int(source) < batch_size:
            raise TransformError(f"extract_patches: source {source} is outside the batch of {batch_size}")
        low = [max(int(c), 0) for c in corner]
        high = [min(int(c) + s, n) for c, s, n in zip(corner, size, shape)]
        if any(h <= lo for lo, h in zip(low, high)) and padding_mode != "constant":
            raise TransformError(f"extract_patches: window at {list(corner)} does not overlap the volume {shape}; "
                                 f"padding_mode={padding_mode!r} needs some data")
        high = [max(h, lo) for lo, h in zip(low, high)]
        piece = volume[int(source):int(source) + 1, :, low[0]:high[0], low[1]:high[1], low[2]:high[2]]
        pad = []
        for c, s, lo, hi in reversed(list(zip(corner, size, low, high))):
            pad += [lo - int(c), int(c) + s - hi]
        if any(pad):
            piece = _pad(piece, pad, padding_mode, cval)
        pieces.append(piece)
    if not pieces:
        return volume.new_empty((0, volume.shape[1], *size))
    return torch.cat(pieces)


def _pad(piece: torch.Tensor, pad: list[int], mode: str, cval: float) -> torch.Tensor:
    if mode == "constant":
        return F.pad(piece, pad, value=cval)
    try:
        return F.pad(piece, pad, mode=mode)
    except (RuntimeError, NotImplementedError) as error:
        raise TransformError(f"cannot pad a patch of shape {tuple(piece.shape[2:])} by {pad} with "
                             f"padding_mode={mode!r}: {error}") from None


class PatchAggregator:
    """Blend overlapping patch predictions into one volume with importance weights.

    Parameters
    ----------
    shape:
        Spatial shape ``(D, H, W)`` of the output.
    mode:
        ``"gaussian"`` (windows count less towards their edges) or ``"constant"`` (plain mean).
    sigma_scale:
        Gaussian standard deviation as a fraction of the window size, one value or one per axis.
    batch_size:
        ``None`` for one volume (:meth:`result` gives ``[C, D, H, W]``), or the number of
        samples (give ``sources`` to :meth:`add`; :meth:`result` gives ``[B, C, D, H, W]``).

    Notes
    -----
    The output is allocated at the first :meth:`add`, on the device of the predictions, in their
    dtype promoted to at least float32. Voxels that no window covered are 0.

    Example
    -------
    >>> grid = GridPatches(4, overlap=0.5)
    >>> x = torch.rand(1, 7, 5, 6)
    >>> corners = grid.corners(x.shape[1:])
    >>> aggregator = PatchAggregator(x.shape[1:], mode="gaussian")
    >>> aggregator.add(grid.extract(x, corners), corners)
    >>> torch.allclose(aggregator.result(), x)
    True
    """

    def __init__(
        self,
        shape: Sequence[int],
        mode: str = "gaussian",
        sigma_scale: float | Sequence[float] = 0.125,
        batch_size: int | None = None,
    ) -> None:
        name = type(self).__name__
        self.shape = _three(tuple(shape) if isinstance(shape, Sequence) else shape, "shape", name,
                            lambda v: _is_int(v) and v > 0, "a positive int")
        if mode not in BLEND_MODES:
            raise ConfigError(f"{name}: mode must be one of {BLEND_MODES}, got {mode!r}")
        self.sigma_scale = _three(sigma_scale, "sigma_scale", name, lambda v: _is_number(v) and v > 0,
                                  "a positive number")
        if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
            raise ConfigError(f"{name}: batch_size must be a positive int or None, got {batch_size!r}")
        self.mode = mode
        self.batch_size = batch_size
        self._output: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None
        self._maps: dict = {}

    def importance_map(self, size: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
        """The weight of each voxel of a window of ``size`` (MONAI's ``compute_importance_map``)."""
        key = (tuple(size), str(device), dtype)
        if key not in self._maps:
            self._maps[key] = importance_map(size, self.mode, self.sigma_scale).to(device=device, dtype=dtype)
        return self._maps[key]

    def add(self, patches: torch.Tensor, corners: Sequence[Sequence[int]], sources: Sequence[int] | None = None):
        """Accumulate ``patches`` ``[N, C, *size]`` whose first voxels sit at ``corners``."""
        if not isinstance(patches, torch.Tensor) or patches.ndim != 5:
            raise TransformError(f"PatchAggregator.add: patches must be a tensor [N, C, D, H, W], "
                                 f"got {getattr(patches, 'shape', type(patches).__name__)}")
        if len(corners) != len(patches):
            raise TransformError(f"PatchAggregator.add: got {len(corners)} corners for {len(patches)} patches")
        if sources is None:
            if self.batch_size is not None:
                raise TransformError("PatchAggregator.add: give sources (the sample of each patch) for a batch")
            sources = [0] * len(patches)
        elif len(sources) != len(patches):
            raise TransformError(f"PatchAggregator.add: got {len(sources)} sources for {len(patches)} patches")
        size = tuple(patches.shape[2:])
        if self._output is None or self._weights is None:  # both are made together
            dtype = torch.promote_types(patches.dtype, torch.float32)
            count = self.batch_size or 1
            self._output = patches.new_zeros((count, patches.shape[1], *self.shape), dtype=dtype)
            self._weights = patches.new_zeros((count, 1, *self.shape), dtype=dtype)
        elif patches.shape[1] != self._output.shape[1]:
            raise TransformError(f"PatchAggregator.add: patches have {patches.shape[1]} channels, "
                                 f"earlier ones had {self._output.shape[1]}")
        weights = self.importance_map(size, patches.device, self._output.dtype)
        for patch, corner, source in zip(patches, corners, sources):
            if not 0 <= int(source) < self._output.shape[0]:
                raise TransformError(f"PatchAggregator.add: source {source} is outside the batch of "
                                     f"{self._output.shape[0]}")
            inside, part = _overlap(corner, size, self.shape)
            if inside is None:
                continue
            self._output[(int(source), slice(None), *inside)] += patch[(slice(None), *part)] * weights[part]
            self._weights[(int(source), slice(None), *inside)] += weights[part]

    def result(self) -> torch.Tensor:
        """The weighted mean of the added patches (``[C, *shape]``, or ``[B, C, *shape]`` for a batch)."""
        if self._output is None or self._weights is None:
            raise TransformError("PatchAggregator.result: no patches were added")
        blended = self._output / self._weights.clamp_min(torch.finfo(self._weights.dtype).tiny)
        return blended if self.batch_size is not None else blended[0]


def importance_map(size: Sequence[int], mode: str = "gaussian", sigma_scale=0.125) -> torch.Tensor:
    """Float32 CPU weights of a window: ones, or MONAI's separable Gaussian clamped at ``max(min, 1e-3)``.

    Example
    -------
    >>> [round(w, 4) for w in importance_map((3, 1, 1), "gaussian", 0.5)[:, 0, 0].tolist()]
    [0.8007, 1.0, 0.8007]
    """
    size = tuple(int(s) for s in size)
    if mode == "constant":
        weights = torch.ones(size, dtype=torch.float32)
    elif mode == "gaussian":
        scales = (sigma_scale,) * len(size) if _is_number(sigma_scale) else tuple(sigma_scale)
        gaussian: torch.Tensor | None = None
        for axis, (n, scale) in enumerate(zip(size, scales)):
            sigma = n * scale
            x = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float32)
            x = torch.exp(x**2 / (-2 * sigma**2))
            gaussian = x if gaussian is None else gaussian.unsqueeze(-1) * x[(None,) * axis]
        assert gaussian is not None, "importance_map: size has no axes"
        weights = gaussian
    else:
        raise ConfigError(f"importance_map: mode must be one of {BLEND_MODES}, got {mode!r}")
    return weights.clamp(min=max(float(weights.min()), 1e-3))


def _overlap(corner, size, shape):
    """Slices of the output and of the patch where a window at ``corner`` meets the volume."""
    inside, part = [], []
    for c, s, n in zip(corner, size, shape):
        low, high = max(int(c), 0), min(int(c) + s, n)
        if high <= low:
            return None, None
        inside.append(slice(low, high))
        part.append(slice(low - int(c), high - int(c)))
    return tuple(inside), tuple(part)


def _spatial(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or any(n < 1 for n in shape):
        raise TransformError(f"expected a spatial shape (D, H, W) of positive sizes, got {shape}")
    return shape


def _as_batch(volume: torch.Tensor, owner: str) -> torch.Tensor:
    if not isinstance(volume, torch.Tensor) or volume.ndim not in (4, 5):
        raise TransformError(f"{owner}: volume must be a tensor [C, D, H, W] or [B, C, D, H, W], "
                             f"got {getattr(volume, 'shape', type(volume).__name__)}")
    return volume if volume.ndim == 5 else volume[None]
