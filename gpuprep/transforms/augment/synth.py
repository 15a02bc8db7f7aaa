"""Random-contrast images from label maps (SynthSeg): one Gaussian intensity model per label.

SynthSeg and SynthStrip train on images made on the fly from label maps: each label gets a random
mean and standard deviation, every voxel a normal intensity with its label's parameters, and the
usual augmentation (bias field, blur, noise, gamma) follows. The model never sees a real contrast,
so it learns the anatomy instead of the scanner. Spatial augmentation runs before, on the label
map alone (nearest neighbour), because the image does not exist yet.

Reference: B. Billot et al., "SynthSeg: Segmentation of brain MRI scans of any contrast and
resolution without retraining", Medical Image Analysis 2023; A. Hoopes et al., "SynthStrip:
skull-stripping for any brain image", NeuroImage 2022.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ...errors import ConfigError, TransformError
from ...functional.augment_intensity import draw_noise
from ...random.ranges import uniform_range
from ...records import applied_samples, random_params
from ...sample import IMAGE, copy_meta, is_label, meta_key
from ...validation import check_probability
from ..random_base import RandomOptions, RandomTransform

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack

__all__ = ["RandLabelsToImage"]


class RandLabelsToImage(RandomTransform):
    """Make a random-contrast image from a label map: ``mean[label] + std[label] * n``.

    Each sample draws, for every label value ``v`` in ``0 .. num_labels - 1``, a mean
    ``mean_v ~ U(mean)`` and a standard deviation ``std_v ~ U(std)``; with probability
    ``zero_background`` label 0 gets ``mean_0 = std_0 = 0`` instead (an empty background, as in
    skull-stripped or masked scans). With ``min_separation = g > 0`` the means are drawn uniformly
    among the tables whose means all differ by at least ``g`` (so no two labels get the same
    intensity and every boundary stays visible); a zeroed background then takes the lowest of
    them. The image is ``mean[label] + std[label] * n`` with ``n``
    standard normal noise drawn on the data's device from a recorded 63-bit ``noise_seed`` (one
    per sample, :func:`~gpuprep.functional.augment_intensity.draw_noise`). The means, stds and
    seed are recorded, so :func:`~gpuprep.replay` repeats the image bit for bit. The lookup is one
    gather from a per-sample table ``[B, num_labels]``: no Python loop over labels or voxels.

    The image has the label map's shape (``[B, 1, D, H, W]`` for a one-channel label map) and is
    written to ``image_key`` with ``{image_key}_meta`` a copy of ``{label_key}_meta``; the label
    map is unchanged. An ``image_key`` already in the sample is **overwritten**; its floating
    dtype is kept (so float16 or float64 pipelines stay so), otherwise the image is float32.

    Partial volumes: a **floating** label tensor ``[B, K, D, H, W]`` holds the fraction of each
    label ``0 .. K-1`` in every voxel (for example tissue probability maps, or a one-hot map after
    linear resampling); a floating tensor with one channel and kind ``"label"`` is a label map
    like an integer one (a label map saved as float by another tool). With fractions each voxel
    mixes its labels' parameters by their fractions, mean ``sum_k f_k mean_k`` and std
    ``sum_k f_k std_k``, as a scanner averages the tissues inside a voxel, and the image is
    ``[B, 1, D, H, W]``. Fractions summing to less than 1 (zeros padded in by a spatial transform)
    give the rest to label 0. Values must lie in [0, 1] (checked on
    the CPU) and ``num_labels``, if given, must equal ``K``.

    Samples skipped by ``p`` (``{"apply": False}`` recorded): an existing ``image_key`` keeps its
    data for them (so ``p=0`` is the identity, metadata included); without one, a skipped sample
    gets its label values as intensities (``label.float()``; ``sum_k k f_k`` for fractions), so a
    batch always has an image. A batch mixing generated and kept images needs the existing image
    to have the generated image's shape.

    Label range and device synchronisation:

    * ``num_labels=None``: each sample's table has ``max(label) + 1`` entries. Finding the
      maximum reads one number per sample back to the host (a device synchronisation on CUDA);
      give ``num_labels`` for a synchronisation-free hot path.
    * ``num_labels=n``: labels must lie in ``0 .. n - 1``. On the CPU (where reading a value is
      free) a label outside raises :class:`~gpuprep.errors.TransformError` naming the key, the
      sample and the value; on other devices the check is skipped (it would synchronise) and
      voxels with such a label get NaN intensities, which no loss lets pass silently.

    Parameters
    ----------
    label_key:
        Key of the integer label map or of the label fractions (it must be in the sample, unless
        ``allow_missing_keys``).
    image_key:
        Key the image is written to (different from ``label_key``).
    num_labels:
        Number of label values (size of the lookup table), or None to take it from the data.
    mean:
        Range of the per-label means: a number ``m`` means ``(0, m)``, or a pair ``(low, high)``.
    std:
        Range of the per-label standard deviations, ``low >= 0``.
    zero_background:
        Probability (per sample) that label 0 gets intensity exactly 0.
    min_separation:
        Smallest difference between the means of any two labels (0: independent draws). It needs
        ``(num_labels - 1) * min_separation <= high - low`` of ``mean``, and ``low >= 0`` when
        ``zero_background > 0``.
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`; ``allow_missing_keys``
        applies to ``label_key``.

    Reference
    ---------
    B. Billot et al., "SynthSeg", Medical Image Analysis 2023 (the Gaussian mixture generative
    model, before its bias field, blur and gamma, which are :class:`~gpuprep.RandBiasField`,
    :class:`~gpuprep.RandBlur` and :class:`~gpuprep.RandGamma` here).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> label = torch.zeros(1, 8, 8, 8, dtype=torch.uint8)
    >>> label[:, 4:] = 1
    >>> s = gp.make_sample({"label": label})
    >>> out = RandLabelsToImage(num_labels=2, std=(0.0, 0.0), seed=0)(s)
    >>> params = gp.get_history(out)[-1]["params"]
    >>> out["image"].dtype, tuple(out["image"].shape)
    (torch.float32, (1, 8, 8, 8))
    >>> torch.equal(out["image"][:, 4:], torch.full((1, 4, 8, 8), params["means"][1]))
    True
    """

    def __init__(
        self,
        label_key: str = "label",
        image_key: str = "image",
        num_labels: int | None = None,
        mean: float | Sequence[float] = (0.0, 1.0),
        std: float | Sequence[float] = (0.0, 0.1),
        zero_background: float = 0.0,
        min_separation: float = 0.0,
        **options: Unpack[RandomOptions],
    ):
        for name, value in (("label_key", label_key), ("image_key", image_key)):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"RandLabelsToImage: {name} must be a non-empty string, got {value!r}")
        if image_key == label_key:
            raise ConfigError(f"RandLabelsToImage: image_key must differ from label_key, both are {label_key!r}")
        super().__init__(label_key, **options)
        if num_labels is not None and (not isinstance(num_labels, int) or isinstance(num_labels, bool)
                                       or num_labels < 1):
            raise ConfigError(f"RandLabelsToImage: num_labels must be None or an integer >= 1, got {num_labels!r}")
        zero_background = check_probability("RandLabelsToImage", "zero_background", zero_background)
        self.label_key, self.image_key = label_key, image_key
        self.num_labels = num_labels
        self.mean = uniform_range(mean, "mean", "RandLabelsToImage")
        self.std = uniform_range(std, "std", "RandLabelsToImage", minimum=0.0)
        self.zero_background = zero_background
        if isinstance(min_separation, bool) or not isinstance(min_separation, (int, float)) or not min_separation >= 0:
            raise ConfigError(f"RandLabelsToImage: min_separation must be a number >= 0, got {min_separation!r}")
        self.min_separation = float(min_separation)
        if self.min_separation > 0 and self.zero_background > 0 and self.mean[0] < 0:
            raise ConfigError(f"RandLabelsToImage: min_separation with zero_background needs mean low >= 0 (the "
                              f"zeroed background must stay below every other label), got mean={self.mean}")
        if num_labels is not None:
            self._check_separation(num_labels)

    # -- parameters ------------------------------------------------------------------------

    def draw_table(self, rng: random.Random, size: int) -> dict:
        """One sample's parameters: ``noise_seed``, ``zero_background``, ``size`` means and stds.

        Label ``v``'s pair is the ``v``-th drawn, so a table's first entries do not depend on its
        size (a sample draws the same intensities in any batch when ``num_labels`` is None).
        """
        noise_seed = rng.getrandbits(63)
        zero = rng.random() < self.zero_background
        means, stds = [], []
        for _ in range(size):
            means.append(rng.uniform(*self.mean))
            stds.append(rng.uniform(*self.std))
        if self.min_separation > 0:
            means = self._separate(means)
            if zero:  # the background takes the lowest mean, so 0 stays below the others
                lowest = min(range(size), key=means.__getitem__)
                means[0], means[lowest] = means[lowest], means[0]
        if zero:
            means[0], stds[0] = 0.0, 0.0
        return {"noise_seed": noise_seed, "zero_background": zero, "means": means, "stds": stds}

    def _check_separation(self, size: int) -> None:
        low, high = self.mean
        if (size - 1) * self.min_separation > high - low + 1e-12:
            raise ConfigError(f"RandLabelsToImage: {size} labels cannot have means {self.min_separation} apart "
                              f"within mean={self.mean}; need (num_labels - 1) * min_separation <= {high - low:g}")

    def _separate(self, draws: list[float]) -> list[float]:
        """Spread independent draws into means at least ``min_separation`` apart, uniformly.

        The draws are rescaled to ``[low, high - (n - 1) g]`` and the ``r``-th smallest moved up
        by ``r g``: a bijection between unconstrained points and separated ones, so the result
        is uniform over the separated tables and each label's rank stays random.
        """
        self._check_separation(len(draws))
        low, high = self.mean
        gap = self.min_separation
        shrink = (high - low - (len(draws) - 1) * gap) / (high - low) if high > low else 0.0
        order = sorted(range(len(draws)), key=draws.__getitem__)
        means = [0.0] * len(draws)
        for rank, index in enumerate(order):
            means[index] = low + (draws[index] - low) * shrink + rank * gap
        return means

    def make_params(self, batch: dict, keys: list[str]) -> list[dict]:
        label = self._label(batch)
        sizes = self._table_sizes(label)
        params: list[dict] = []
        for rng, size in zip(self._streams(batch, keys), sizes):
            apply = rng.random() < self.p
            drawn = self.draw_table(rng, size)  # drawn even when skipped, so the stream stays aligned
            params.append(random_params(apply, drawn))
        return params

    def _label(self, batch: dict) -> torch.Tensor:
        label = batch[self.label_key]
        if label.is_complex() or label.dtype == torch.bool:
            raise TransformError(f"RandLabelsToImage: {self.label_key!r} must be an integer label map or "
                                 f"floating label fractions, got dtype {label.dtype}")
        if (label.is_floating_point() and label.shape[1] == 1 and meta_key(self.label_key) in batch
                and is_label(batch, self.label_key)):
            # A one-channel label map stored as float (kind "label"): its values are labels, not the
            # fractions of a single label 0. Fractions have one channel per label.
            return label.round().long()
        return label

    def _check_fractions(self, fractions: torch.Tensor) -> None:
        """Floating labels are fractions ``[B, K, ...]``: K must match ``num_labels``, values in [0, 1]."""
        if fractions.ndim < 3:
            raise TransformError(f"RandLabelsToImage: label fractions {self.label_key!r} must be [B, K, ...], got "
                                 f"shape {tuple(fractions.shape)}")
        if self.num_labels is not None and fractions.shape[1] != self.num_labels:
            raise TransformError(f"RandLabelsToImage: label fractions {self.label_key!r} have {fractions.shape[1]} "
                                 f"channels; with num_labels={self.num_labels} they need one per label")
        if fractions.device.type == "cpu":  # reading the range back is free only on the CPU
            low, high = (float(v) for v in torch.aminmax(fractions))
            if not (low >= 0.0 and high <= 1.0 + 1e-4):
                raise TransformError(f"RandLabelsToImage: label fractions {self.label_key!r} must lie in [0, 1], "
                                     f"got values from {low:g} to {high:g}")

    def _table_sizes(self, label: torch.Tensor) -> list[int]:
        """Per-sample table sizes; checks the label range where that needs no synchronisation."""
        if label.is_floating_point():
            self._check_fractions(label)
            return [label.shape[1]] * label.shape[0]
        if self.num_labels is not None and label.device.type != "cpu":
            return [self.num_labels] * label.shape[0]
        flat = label.reshape(label.shape[0], -1)
        low, high = flat.amin(dim=1).tolist(), flat.amax(dim=1).tolist()  # [B] each
        for index, (lowest, highest) in enumerate(zip(low, high)):
            bad = lowest if lowest < 0 else highest if self.num_labels is not None and highest >= self.num_labels \
                else None
            if bad is not None:
                allowed = "0 or more" if self.num_labels is None else f"in 0..{self.num_labels - 1}"
                raise TransformError(f"RandLabelsToImage: {self.label_key!r} (sample {index}) has label value "
                                     f"{int(bad)}; labels must be {allowed} (num_labels={self.num_labels})")
        return [self.num_labels] * label.shape[0] if self.num_labels is not None else [int(h) + 1 for h in high]

    # -- applying --------------------------------------------------------------------------

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        label = self._label(batch)
        found = batch.get(self.image_key)
        existing = found if isinstance(found, torch.Tensor) and found.ndim == label.ndim else None
        keep = existing is not None
        dtype = existing.dtype if existing is not None and existing.is_floating_point() else torch.float32
        chosen = applied_samples(params)
        if not chosen and keep:
            return batch  # nothing generated: the image (and its metadata) stay as they are
        if len(chosen) == len(params):
            image = self.generate(label, params, dtype)
        else:
            shape = label.shape if not label.is_floating_point() else (label.shape[0], 1, *label.shape[2:])
            if existing is not None and existing.shape != shape:
                raise TransformError(
                    f"RandLabelsToImage: {self.image_key!r} has shape {tuple(existing.shape)}, the image of "
                    f"{self.label_key!r} {tuple(shape)}; a batch where p skips some samples keeps their image, so "
                    "the shapes must match (or use p=1)")
            image = existing.to(dtype) if existing is not None else _label_values(label, dtype)
            if chosen:
                index = torch.tensor(chosen, device=label.device)
                made = self.generate(label.index_select(0, index), [params[i] for i in chosen], dtype)
                image = image.index_copy(0, index, made)
        batch[self.image_key] = image
        batch[meta_key(self.image_key)] = copy_meta(batch.get(meta_key(self.label_key), {}), kind=IMAGE)
        return batch

    def generate(self, label: torch.Tensor, params: list[dict], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The image of ``label`` ``[b, C, D, H, W]`` for the drawn ``params`` (one dict per sample)."""
        size = max(len(p["means"]) for p in params)
        table = torch.zeros((2, len(params), size), dtype=torch.float32)
        for row, p in enumerate(params):
            table[0, row, : len(p["means"])] = torch.tensor(p["means"], dtype=torch.float32)
            table[1, row, : len(p["stds"])] = torch.tensor(p["stds"], dtype=torch.float32)
        table = table.to(label.device)
        if label.is_floating_point():
            return self._generate_mixed(label, table, params, dtype)
        view = (-1,) + (1,) * (label.ndim - 1)
        offsets = torch.arange(len(params), device=label.device).reshape(view) * size
        index = label.long()
        checked = self.num_labels is None or label.device.type == "cpu"
        flat = (index if checked else index.clamp(0, size - 1)) + offsets
        means = table[0].reshape(-1)[flat]
        stds = table[1].reshape(-1)[flat]
        noise = draw_noise(label, [p["noise_seed"] for p in params], dtype=torch.float32)[0]
        image = torch.addcmul(means, stds, noise)
        if not checked:
            valid = (index >= 0) & (index < size)
            image = torch.where(valid, image, torch.full((), math.nan, device=label.device))
        return image.to(dtype)

    @staticmethod
    def _generate_mixed(fractions: torch.Tensor, table: torch.Tensor, params: list[dict],
                        dtype: torch.dtype) -> torch.Tensor:
        """Partial volumes: each voxel mixes its labels' means and stds by their fractions.

        Fractions summing to less than 1 (zeros a spatial transform padded in) leave the rest
        to label 0, the background: ``m = m_0 + sum_k f_k (m_k - m_0)``, and the same for ``s``.
        """
        weights = fractions.to(torch.float32)
        size = weights.shape[1]
        view = (weights.shape[0], 1) + (1,) * (weights.ndim - 2)
        relative = table[:, :, :size] - table[:, :, :1]  # [2, B, K]: each label against the background
        means = torch.einsum("bk...,bk->b...", weights, relative[0]).unsqueeze(1) + table[0, :, :1].reshape(view)
        stds = torch.einsum("bk...,bk->b...", weights, relative[1]).unsqueeze(1) + table[1, :, :1].reshape(view)
        noise = draw_noise(weights[:, :1], [p["noise_seed"] for p in params], dtype=torch.float32)[0]
        return torch.addcmul(means, stds, noise).to(dtype)


def _label_values(label: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The label map as intensities (the image of a skipped sample): fractions give ``sum_k k f_k``."""
    if not label.is_floating_point():
        return label.to(dtype)
    values = torch.arange(label.shape[1], device=label.device, dtype=torch.float32)
    return torch.einsum("bk...,k->b...", label.to(torch.float32), values).unsqueeze(1).to(dtype)
