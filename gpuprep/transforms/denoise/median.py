"""Exact median filtering in slabs (a comparator network, no sort)."""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import ConfigError
from ...functional.filters import BOUNDARY_MODES
from ...functional.median import check_window, median_filter
from ...validation import check_int
from ..base import Transform, float_intensity_keys
from ._common import check_choice, check_per_axis


class MedianDenoise(Transform):
    """Replace every voxel by the median of the ``(2r+1)^3`` box around it (salt-and-pepper noise).

    The result is exact (bit-identical to scipy), computed by a network of elementwise
    ``minimum``/``maximum`` operations on slabs of the volume, so the memory stays bounded by
    ``chunk_mb`` whatever the radius; see :func:`gpuprep.functional.filters.median_filter`.
    Label maps (by kind) are left alone.

    Parameters
    ----------
    keys:
        Image keys to filter.
    radius:
        Half-width in voxels: one integer or one per axis ``(D, H, W)``; the box side is ``2r+1``.
        The box may hold at most 1331 values (11 x 11 x 11, radius 5): a larger one is refused
        here, before any work (the comparator network grows faster than the box).
    mode:
        Boundary handling: ``"reflect"`` (scipy's default), ``"mirror"``, ``"nearest"``,
        ``"wrap"``, ``"constant"`` (zeros).
    chunk_mb:
        Working-memory budget in MiB for the slabs.
    allow_missing_keys:
        Skip keys that are absent instead of raising.

    Reference
    ---------
    ``scipy.ndimage.median_filter(volume, size=2 * radius + 1, mode=mode)`` per channel (exact).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> from gpuprep.transforms.denoise import MedianDenoise
    >>> x = torch.zeros(1, 8, 8, 8); x[0, 4, 4, 4] = 1000.0
    >>> float(MedianDenoise("image", radius=1)(gp.make_sample({"image": x}))["image"].max())
    0.0
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        radius: int | Sequence[int] = 1,
        mode: str = "reflect",
        chunk_mb: int = 128,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.radius = check_per_axis(name, "radius", radius, minimum=0, integer=True)
        try:
            check_window(tuple(self.radius))
        except ValueError as error:
            raise ConfigError(f"{name}: {error}") from None
        self.mode = check_choice(name, "mode", mode, BOUNDARY_MODES)
        self.chunk_mb = check_int(name, "chunk_mb", chunk_mb, minimum=1)

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        for key in float_intensity_keys(batch, keys):
            batch[key] = median_filter(batch[key], self.radius, self.mode, chunk_bytes=self.chunk_mb * 2**20)
        return batch
