"""Background removal: a foreground mask from a threshold and binary morphology, and masking images."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from ...errors import ConfigError
from ...functional.intensity import mask_fill
from ...functional.morphology import binary_closing, fill_holes, largest_component
from ...functional.threshold import otsu_threshold
from ...sample import LABEL, copy_meta, meta_key
from ...validation import check_bool
from ..base import Transform, float_intensity_keys
from ..intensity._masking import check_number, mask_tensor

OTSU_BINS = 256


class ForegroundMask(Transform):
    """Compute a foreground (head/body) mask from an image and store it under ``mask_key``.

    Steps, per sample, all on the image's device:

    1. threshold: ``x > t`` in any channel, with ``t`` from Otsu's method (``method="otsu"``:
       one threshold per sample over all its channels, 256 bins, as
       :func:`skimage.filters.threshold_otsu`) or the given number;
    2. ``largest_component``: keep the largest 6-connected component (as ``scipy.ndimage.label``);
    3. ``closing_radius > 0``: binary closing with a ball of that radius **in voxels** (on an
       anisotropic grid an ellipsoid in millimetres); the volume counts as surrounded by
       background, so the mask is not eroded where it touches the border (see
       :func:`gpuprep.functional.morphology.binary_closing`);
    4. ``fill_holes``: fill cavities not 6-connected to the border (as
       ``scipy.ndimage.binary_fill_holes``).

    The mask is uint8 ``[1, D, H, W]`` (``[B, 1, D, H, W]`` for a batch) and gets a copy of the
    source's metadata under ``meta_key(mask_key)``. The threshold is not recorded (it would need a
    host read); replay recomputes it. Steps 2 and 4 give exactly scipy's result. On the CPU with
    numba they label the runs of the mask (:mod:`gpuprep.functional.flood_kernels`, one thread):
    15 ms together for a 1 mm head, the whole transform about 90 ms, most of it Otsu's threshold
    (scipy's steps 2 and 4 alone: 0.4 s). On CUDA, or without numba, they are flood fills seeded
    on 2x2x2 blocks and finished on a graph of the voxels left (:mod:`gpuprep.functional.flood`),
    with a handful of host reads per call (the whole transform about 0.5 s on one CPU thread).

    Parameters
    ----------
    keys:
        The one source image key.
    mask_key:
        Key of the new mask (must differ from the source key).
    method:
        ``"otsu"`` or a number (threshold in the image's intensity units).
    fill_holes:
        Fill enclosed holes.
    largest_component:
        Keep only the largest connected component.
    closing_radius:
        Radius in voxels of the closing ball; 0 skips the closing.
    allow_missing_keys:
        Skip (write nothing) when the source key is absent instead of raising.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> x = torch.zeros(1, 16, 16, 16)
    >>> x[:, 4:12, 4:12, 4:12] = 1.0
    >>> out = gp.ForegroundMask("image")(gp.make_sample({"image": x}))
    >>> out["foreground"].dtype, int(out["foreground"].sum())
    (torch.uint8, 512)
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        mask_key: str = "foreground",
        method: str | float = "otsu",
        fill_holes: bool = True,
        largest_component: bool = True,
        closing_radius: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        if len(self.keys) != 1:
            raise ConfigError(f"{name}: keys must name exactly one source image, got {self.keys!r}")
        if not isinstance(mask_key, str) or not mask_key or mask_key == self.keys[0]:
            raise ConfigError(
                f"{name}: mask_key must be a non-empty string different from the source key "
                f"{self.keys[0]!r}, got {mask_key!r}"
            )
        self.mask_key = mask_key
        if method != "otsu":
            if not isinstance(method, numbers.Real) or isinstance(method, bool):
                raise ConfigError(f"{name}: method must be 'otsu' or a number (threshold), got {method!r}")
            method = check_number(name, "method", method)
        self.method = method
        self.fill_holes = check_bool(name, "fill_holes", fill_holes)
        self.largest_component = check_bool(name, "largest_component", largest_component)
        if isinstance(closing_radius, bool) or not isinstance(closing_radius, int) or closing_radius < 0:
            raise ConfigError(
                f"{name}: closing_radius must be a non-negative integer (voxels), got {closing_radius!r}"
            )
        self.closing_radius = closing_radius

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        (key,) = keys
        x = batch[key]
        values = x if x.is_floating_point() else x.float()
        if self.method == "otsu":
            threshold = otsu_threshold(values, bins=OTSU_BINS)  # [B]
            threshold = threshold.reshape(-1, 1, 1, 1, 1).to(values.dtype)
        else:
            threshold = torch.tensor(self.method, dtype=values.dtype, device=values.device)
        mask = (values > threshold).any(dim=1, keepdim=True)
        if self.largest_component:
            mask = largest_component(mask)
        if self.closing_radius:
            mask = binary_closing(mask, self.closing_radius, pad=True)
        if self.fill_holes:
            mask = fill_holes(mask)
        batch[self.mask_key] = mask.to(torch.uint8)
        batch[meta_key(self.mask_key)] = copy_meta(batch.get(meta_key(key), {}), kind=LABEL)
        return batch


class MaskImage(Transform):
    """Set the voxels of intensity images outside a mask to ``fill`` (background removal).

    The mask is the sample's ``mask_key`` entry (``[1 or C, D, H, W]``; nonzero = inside), e.g.
    made by :class:`ForegroundMask`. Integer keys (label maps) are left alone, like TorchIO's
    ``Mask``; float dtypes are kept. Nothing to record.

    Parameters
    ----------
    keys:
        Image keys.
    mask_key:
        Key of the mask in the sample (it must be present).
    fill:
        Value written outside the mask.
    allow_missing_keys:
        Skip absent image keys instead of raising (a missing mask always raises).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.ones(1, 2, 2, 2),
    ...                     "brain": torch.tensor([1, 0]).repeat_interleave(4).reshape(1, 2, 2, 2)})
    >>> gp.MaskImage("image", "brain")(s)["image"].sum().item()
    4.0
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        mask_key: str,
        fill: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        if not isinstance(mask_key, str) or not mask_key:
            raise ConfigError(f"{name}: mask_key must be a non-empty string, got {mask_key!r}")
        self.mask_key = mask_key
        if isinstance(fill, bool) or not isinstance(fill, numbers.Real):
            raise ConfigError(f"{name}: fill must be a number, got {fill!r}")
        self.fill: float = float(fill)

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        name = type(self).__name__
        targets = float_intensity_keys(batch, keys)  # masks read before any key is replaced
        masks = {key: mask_tensor(name, batch, key, self.mask_key, batch[key]) for key in targets}
        for key in targets:
            batch[key] = mask_fill(batch[key], masks[key], self.fill)
        return batch
