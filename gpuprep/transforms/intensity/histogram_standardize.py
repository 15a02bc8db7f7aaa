"""Nyúl & Udupa histogram standardisation as a dictionary transform, with training (``fit``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigError, TransformError
from ...functional.histogram_standardize import (
    DEFAULT_CUTOFF,
    DEFAULT_QUANTILES,
    STANDARD_RANGE,
    average_landmarks,
    landmark_percentiles,
    snap_ties,
    standardize,
    uniform_landmarks,
)
from ...functional.percentile import DEFAULT_BINS, percentile
from ..base import Transform, float_intensity_keys
from ._masking import NONZERO, check_mask_argument, check_number, check_pair, resolve_mask
from .landmarks import (
    as_landmark_vector,
    landmarks_to_tensors,
    load_landmarks,
    read_landmarks_file,
    save_landmarks,
)


class HistogramStandardize(Transform):
    """Map each image's intensity percentiles piecewise linearly onto trained landmarks (Nyúl & Udupa).

    Per sample, the percentiles ``100 * cutoff[0]``, ``100 * quantiles`` and ``100 * cutoff[1]``
    of the voxels in ``mask`` are mapped onto the key's landmarks, linearly in between and
    extrapolating the first and last segment outside; segments whose percentiles are closer than
    ``epsilon`` get slope 0. Percentiles closer than two histogram bins (``2 * (max - min) /
    65536``) are treated as exact ties (:func:`~gpuprep.functional.histogram_standardize.snap_ties`),
    so a large background of zeros maps as in TorchIO. Defaults, definitions and the training
    rule are those of TorchIO's ``HistogramStandardization`` (cutoff ``(0.01, 0.99)``, deciles,
    output range 0..100, whole image as mask), so TorchIO's landmark files can be used (their
    13-value arrays are accepted).
    Percentiles come from :func:`gpuprep.functional.percentile.percentile` on the data's device
    (within 1.5e-5 of the range of ``numpy.percentile``); nothing is read back, nothing
    data-derived is recorded, replay recomputes. Samples with an empty mask are left unchanged;
    integer keys too.

    Parameters
    ----------
    keys:
        Image keys.
    landmarks:
        The target landmarks: a dict ``{key: array or path}``, a single array used for every key,
        the path of a file written by :meth:`save_landmarks` (or TorchIO), or None for
        :func:`~gpuprep.functional.histogram_standardize.uniform_landmarks` (landmarks spaced like
        their percentiles over ``output_range``: a training-free piecewise-linear equalisation).
        The resolved values are recorded in the configuration, so replaying a history does not
        need the file.
    mask:
        Voxels the percentiles come from: None (all, TorchIO's default), ``"nonzero"`` or a mask key.
    cutoff:
        Lower and upper quantile, ``0 <= low < high <= 1``.
    quantiles:
        Quantiles strictly between the cutoffs.
    output_range:
        The standard scale the cutoff percentiles of training images are mapped to (used by
        :meth:`fit` and for ``landmarks=None``).
    epsilon:
        Minimum percentile spacing for a segment to keep its slope (TorchIO: 1e-5).
    allow_missing_keys:
        Skip absent keys instead of raising.

    References
    ----------
    L. G. Nyúl, J. K. Udupa and X. Zhang (2000), New variants of a method of MRI scale
    standardization, *IEEE Transactions on Medical Imaging* 19(2), 143-150.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> images = [torch.rand(1, 8, 8, 8) * s for s in (1.0, 2.0, 3.0)]
    >>> landmarks = gp.HistogramStandardize.fit(images)
    >>> transform = gp.HistogramStandardize("image", landmarks={"image": landmarks})
    >>> out = transform(gp.make_sample({"image": images[0]}))
    >>> out["image"].shape
    torch.Size([1, 8, 8, 8])
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        landmarks: Any = None,
        mask: str | None = None,
        cutoff: Sequence[float] = DEFAULT_CUTOFF,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        output_range: Sequence[float] = STANDARD_RANGE,
        epsilon: float = 1e-5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.cutoff, self.quantiles = _check_layout(name, cutoff, quantiles)
        self.output_range = check_pair(name, "output_range", output_range, increasing=True)
        self.mask = check_mask_argument(name, mask)
        self.epsilon = check_number(name, "epsilon", epsilon)
        if self.epsilon < 0:
            raise ConfigError(f"{name}: epsilon must be >= 0, got {epsilon!r}")
        self.percentiles = landmark_percentiles(self.cutoff, self.quantiles)
        self.landmarks = self._resolve(landmarks)
        if landmarks is not None:  # record the values, not a path that may move
            self._init_args["landmarks"] = {k: v.tolist() for k, v in self.landmarks.items()}

    def _resolve(self, landmarks: Any) -> dict[str, torch.Tensor]:
        name = type(self).__name__
        if landmarks is None:
            target = uniform_landmarks(self.cutoff, self.quantiles, self.output_range)
            return dict.fromkeys(self.keys, target)
        if isinstance(landmarks, (str, os.PathLike)):
            value, info = read_landmarks_file(landmarks)
            self._check_file_settings(landmarks, info)
            landmarks = landmarks_to_tensors(value, Path(landmarks).expanduser().parent)
        if isinstance(landmarks, Mapping):
            missing = [k for k in self.keys if k not in landmarks]
            if missing:
                raise ConfigError(
                    f"{name}: landmarks has no entry for key(s) {missing}; "
                    f"it has {sorted(map(str, landmarks))}"
                )
            resolved = {}
            for key in self.keys:
                value = landmarks[key]
                if isinstance(value, (str, os.PathLike)):
                    value = load_landmarks(value)
                resolved[key] = as_landmark_vector(
                    name, f"landmarks[{key!r}]", value, self.cutoff, self.quantiles
                )
            return resolved
        vector = as_landmark_vector(name, "landmarks", landmarks, self.cutoff, self.quantiles)
        return dict.fromkeys(self.keys, vector)

    def _check_file_settings(self, path: Any, info: dict) -> None:
        mine = {
            "cutoff": list(self.cutoff),
            "quantiles": list(self.quantiles),
            "output_range": list(self.output_range),
        }
        for field, value in info.items():
            if [round(float(v), 10) for v in value] != [round(float(v), 10) for v in mine[field]]:
                raise ConfigError(
                    f"{type(self).__name__}: landmarks file {str(path)!r} was made with {field}={value}, "
                    f"but the transform uses {field}={mine[field]}"
                )

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        name = type(self).__name__
        targets = float_intensity_keys(batch, keys)  # masks read before any key is replaced
        masks = {key: resolve_mask(name, batch, key, self.mask) for key in targets}
        for key in targets:
            x = batch[key]
            values = percentile(x, [0.0, *self.percentiles, 100.0], masks[key], bins=DEFAULT_BINS)
            low, high = values[:, 0], values[:, -1]
            # Tied percentiles (a background of zeros) come out of the histogram up to a bin
            # apart: make them equal, as NumPy's exact ones are, so the ties behave as in TorchIO.
            source = snap_ties(values[:, 1:-1], low, high, DEFAULT_BINS)
            target = self.landmarks[key].to(x.device)
            batch[key] = standardize(x, source, target, self.epsilon)
        return batch

    # -- training and files ----------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        images: Any,
        *,
        key: str = "image",
        mask: Any = None,
        cutoff: Sequence[float] = DEFAULT_CUTOFF,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        output_range: Sequence[float] = STANDARD_RANGE,
    ) -> torch.Tensor:
        """Learn landmarks from training images (TorchIO's ``HistogramStandardization.train``).

        Parameters
        ----------
        images:
            Tensors ``[C, D, H, W]``, batches ``[B, C, D, H, W]``, image paths (read with
            :func:`gpuprep.io.reader.read_image`), samples/batches (dicts; ``key`` is used), or a
            list mixing them. Each batch is processed at once on its own device.
        key:
            The image key inside samples.
        mask:
            None (all voxels, TorchIO's default), ``"nonzero"``, a mask key (for samples), one
            mask (tensor or path) for every image, or a list with one mask per item of ``images``.
        cutoff, quantiles, output_range:
            As for the transform; use the same values there.

        Returns
        -------
        torch.Tensor
            float64 ``[K]`` landmarks, K = number of percentiles (11 by default).

        Example
        -------
        >>> import torch
        >>> HistogramStandardize.fit([torch.rand(1, 8, 8, 8), torch.rand(1, 8, 8, 8)]).shape
        torch.Size([11])
        """
        name = f"{cls.__name__}.fit"
        cutoff, quantiles = _check_layout(name, cutoff, quantiles)
        output_range = check_pair(name, "output_range", output_range, increasing=True)
        percentiles = landmark_percentiles(cutoff, quantiles)
        items = list(images) if _is_collection(images) else [images]
        if not items:
            raise ConfigError(f"{name}: images is empty")
        masks = _per_item_masks(name, mask, len(items))
        rows = []
        for index, (item, item_mask) in enumerate(zip(items, masks)):
            x, inside = _load_item(name, item, item_mask, key, index)
            values = percentile(x, percentiles, inside).to("cpu", torch.float64)
            if bool(torch.isnan(values).any()):
                raise TransformError(f"{name}: images[{index}] has no voxel inside its mask")
            rows.append(values)
        return average_landmarks(torch.cat(rows), output_range)

    @staticmethod
    def save_landmarks(landmarks: Any, path: str | os.PathLike, **settings: Any) -> Path:
        """Write landmarks atomically (``.json``, ``.npy`` or ``.pt``/``.pth``); see :mod:`.landmarks`."""
        return save_landmarks(landmarks, path, **settings)

    @staticmethod
    def load_landmarks(path: str | os.PathLike) -> torch.Tensor | dict[str, torch.Tensor]:
        """Read landmarks written by :meth:`save_landmarks` or by TorchIO."""
        return load_landmarks(path)


def _check_layout(owner: str, cutoff: Any, quantiles: Any) -> tuple[tuple[float, float], tuple[float, ...]]:
    low, high = check_pair(owner, "cutoff", cutoff, increasing=True)
    if not 0 <= low < high <= 1:
        raise ConfigError(f"{owner}: cutoff must satisfy 0 <= low < high <= 1, got {tuple(cutoff)!r}")
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Sequence) or not quantiles:
        raise ConfigError(f"{owner}: quantiles must be a non-empty sequence of numbers, got {quantiles!r}")
    values = tuple(check_number(owner, "quantiles[...]", q) for q in quantiles)
    if not all(low < q < high for q in values) or len(set(values)) != len(values):
        raise ConfigError(
            f"{owner}: quantiles must be distinct and strictly between the cutoffs {low} and {high}, "
            f"got {list(quantiles)}"
        )
    return (low, high), tuple(sorted(values))


def _is_collection(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(
        value, (str, bytes, os.PathLike, torch.Tensor, Mapping)
    )


def _per_item_masks(owner: str, mask: Any, count: int) -> list:
    if _is_collection(mask):
        masks = list(mask)
        if len(masks) != count:
            raise ConfigError(f"{owner}: got {len(masks)} masks for {count} images")
        return masks
    return [mask] * count


def _read(path: Any) -> torch.Tensor:
    from ...io.reader import read_image  # imported late: the IO layer is optional here

    data, _ = read_image(path, dtype=torch.float32)
    return data


def _batched(owner: str, tensor: Any, what: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (4, 5):
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ConfigError(f"{owner}: {what} must be a tensor [C, D, H, W] or [B, C, D, H, W], got {shape}")
    return tensor if tensor.ndim == 5 else tensor.unsqueeze(0)


def _load_item(owner: str, item: Any, mask: Any, key: str, index: int) -> tuple[torch.Tensor, Any]:
    """One item of ``fit``'s images as a batch ``[B, C, D, H, W]`` and its mask (or None)."""
    sample = item if isinstance(item, Mapping) else None
    if sample is not None:
        if key not in sample:
            raise ConfigError(
                f"{owner}: images[{index}] has no key {key!r}; it has {sorted(map(str, sample))}"
            )
        x = _batched(owner, sample[key], f"images[{index}][{key!r}]")
    elif isinstance(item, (str, os.PathLike)):
        x = _read(item).unsqueeze(0)
    else:
        x = _batched(owner, item, f"images[{index}]")
    if not x.is_floating_point():
        x = x.float()
    if mask is None:
        return x, None
    if isinstance(mask, str) and mask == NONZERO:
        return x, x != 0
    if isinstance(mask, str) and sample is not None and mask in sample:
        m = _batched(owner, sample[mask], f"images[{index}][{mask!r}]")
    elif isinstance(mask, (str, os.PathLike)):
        m = _read(mask).unsqueeze(0)
    elif isinstance(mask, torch.Tensor):
        m = _batched(owner, mask, f"mask for images[{index}]")
    else:
        raise ConfigError(
            f"{owner}: mask must be None, 'nonzero', a mask key, a tensor or a path, "
            f"got {type(mask).__name__}"
        )
    if m.shape[-3:] != x.shape[-3:] or m.shape[0] not in (1, x.shape[0]) or m.shape[1] not in (1, x.shape[1]):
        raise TransformError(
            f"{owner}: mask of images[{index}] has shape {tuple(m.shape)}, image has {tuple(x.shape)}"
        )
    return x, m.to(x.device) != 0
