"""Sharpen a network's tissue probabilities with the image's own intensities (one EM step).

The tissue U-Net works at 1.5 mm; mapped back to a 1 mm scan, its probabilities are smooth
across boundaries thinner than its voxels (sulcal CSF, the cortical ribbon). The scan itself
still has those boundaries. :func:`refine_tissue_probabilities` fits one Gaussian intensity
model per tissue to *this* image, weighting every voxel by the network's probability of that
tissue, and combines it with the network's probabilities as spatial priors (Bayes' rule):
one expectation-maximisation step of the classic prior-guided Gaussian mixture (SPM's unified
segmentation, FSL FAST and ANTs Atropos with prior maps work this way). The intensities are
fitted per image, so the step is as contrast-agnostic as the network. Background is left alone:
its intensities (air, skull, scalp, or zeros after skull stripping) are no one Gaussian, so its
probability is kept and only the tissue share ``1 - p(background)`` is redistributed.

Cost: all work is restricted to the bounding box of the voxels with a tissue probability above
zero (exact: the other voxels weigh nothing and keep their probabilities), every tissue is
handled in one stacked operation, in float32, and the local means (a Gaussian of about 10 mm)
are smoothed on a grid :data:`COARSE_SIGMA_VOXELS` times coarser than the sigma, then
trilinearly upsampled. On a 1 mm brain mask (about 4 M voxels in its box) this takes well under
a second on 2 CPU threads, where the full-resolution float64 version took half a minute.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..functional.filters import gaussian_filter
from ..functional.morphology import bounding_box

__all__ = ["COARSE_SIGMA_VOXELS", "refine_tissue_probabilities"]

#: The local means are smoothed on a grid coarsened by ``floor(sigma / COARSE_SIGMA_VOXELS)``
#: per axis, so that their Gaussian still spans this many coarse voxels (sigma 10 voxels:
#: a 4x coarser grid, 64 times fewer voxels); 1 (no coarsening) below twice this sigma.
COARSE_SIGMA_VOXELS = 2.5
# A voxel's local mean leans on the tissue's global one until the smoothed weight reaches about 5 %.
_LOCAL_PRIOR = 0.05


def refine_tissue_probabilities(probabilities: torch.Tensor, image: torch.Tensor,
                                tissue_classes: Sequence[int], local_sigma: Sequence[float] | None = None,
                                downsample: int | Sequence[int] | None = None) -> torch.Tensor:
    """Posterior tissue probabilities from network priors and a Gaussian intensity model per tissue.

    For each tissue ``k`` in ``tissue_classes`` the mean and variance of every image channel are
    averages weighted by ``probabilities[k]`` (the mean over the whole image, or around each voxel
    with ``local_sigma``; the variance over the whole image); each voxel's tissue share is
    then split in proportion to ``p_k * N(x; mean_k, var_k)`` (channels independent). The other
    classes (background) keep their probabilities, so the result still sums to 1 wherever the
    input did. Voxels whose tissue probabilities are all 0 (e.g. outside a brain mask) weigh
    nothing and are returned unchanged.

    Parameters
    ----------
    probabilities:
        Class probabilities ``[K, D, H, W]`` (e.g. softmax outputs mapped onto the image's grid).
    image:
        The image ``[C, D, H, W]`` on the same grid, any intensity scale.
    tissue_classes:
        Indices (channels of ``probabilities``) of the tissues to refine, e.g. ``(1, 2, 3)`` for
        CSF, GM and WM.
    local_sigma:
        ``None``: one mean per tissue for the whole image. Otherwise the Gaussian width in voxels
        ``(sD, sH, sW)`` of a local mean per voxel (the probability-weighted intensities and the
        weights are each smoothed, then divided), which follows a smooth bias field.
    downsample:
        Coarsening of the grid the local means are smoothed on: an int or one per axis (each
        axis is averaged over blocks of that many voxels, smoothed with the equivalent
        sigma, and the means are upsampled trilinearly). ``None`` (default): ``floor(sigma /``
        :data:`COARSE_SIGMA_VOXELS` ``)`` per axis, at least 1; ``1``: the exact full-resolution
        smoothing. A 10-voxel sigma changes by less than 1 % of the tissues' contrast this way.

    Returns
    -------
    torch.Tensor
        Refined probabilities ``[K, D, H, W]`` float32 on the input's device.

    Example
    -------
    >>> x = torch.zeros(1, 8, 4, 4); x[:, 4:] = 1.0  # slices 0-3 dark, 4-7 bright
    >>> p = torch.zeros(3, 8, 4, 4); p[0] = 0.1  # background 0.1; tissue 1 dark, tissue 2 bright
    >>> p[1, :4], p[2, :4], p[1, 4:], p[2, 4:] = 0.8, 0.1, 0.1, 0.8
    >>> p[1, 3], p[2, 3] = 0.3, 0.6  # the network leans the wrong way on slice 3 (it is dark)
    >>> q = refine_tissue_probabilities(p, x, (1, 2))
    >>> bool((q[1, 3] > q[2, 3]).all()), bool(torch.allclose(q.sum(0), p.sum(0)))
    (True, True)
    """
    if probabilities.ndim != 4 or image.ndim != 4 or probabilities.shape[1:] != image.shape[1:]:
        raise ValueError(
            "refine_tissue_probabilities: probabilities [K, D, H, W] and image [C, D, H, W] must share "
            f"a grid, got {tuple(probabilities.shape)} and {tuple(image.shape)}"
        )
    classes = list(tissue_classes)
    if not classes or any(not 0 <= k < probabilities.shape[0] for k in classes):
        raise ValueError(
            f"refine_tissue_probabilities: tissue_classes must index the {probabilities.shape[0]} classes, "
            f"got {classes!r}"
        )
    sigma = None if local_sigma is None else _three(local_sigma, "local_sigma", float, 0.0)
    factors = None
    if sigma is not None:
        factors = (tuple(max(1, int(s // COARSE_SIGMA_VOXELS)) for s in sigma) if downsample is None
                   else _three(downsample, "downsample", int, 1))
    p = probabilities.float()
    x = image.to(p.device, torch.float32)
    # A floor for the variance, relative to the image's own spread (over the whole image, so that
    # it does not depend on the box below): a tissue the network puts on constant voxels (zeros
    # outside a stripped brain) must not become an infinitely sharp spike.
    floor = (x.flatten(1).var(dim=1) * 1e-4).clamp_min(1e-12)  # [C]
    refined = p.clone()
    share = p[classes].sum(0)
    box = bounding_box(share)
    if box is None:  # no tissue anywhere: nothing to refine
        return refined
    p_box, x_box = p[(slice(None), *box)], x[(slice(None), *box)]
    weight = p_box[classes]  # [T, d, h, w]
    w = weight.unsqueeze(1)  # [T, 1, d, h, w]
    total = weight.sum((1, 2, 3)).clamp_min(1e-12).view(-1, 1, 1, 1, 1)  # [T, 1, 1, 1, 1]
    mean = (w * x_box).sum((2, 3, 4), keepdim=True) / total  # [T, C, 1, 1, 1]
    if sigma is not None and factors is not None:  # factors are set with sigma
        mean = _local_means(weight, x_box, mean, sigma, factors)  # [T, C, d, h, w]
    squared = (x_box - mean).square_()  # [T, C, d, h, w]
    var = torch.maximum((w * squared).sum((2, 3, 4), keepdim=True) / total, floor.view(1, -1, 1, 1, 1))
    log_likelihood = (squared.div_(var).add_(torch.log(var))).sum(1).mul_(-0.5)  # [T, d, h, w]
    log_posterior = log_likelihood.add_(torch.log(weight.clamp_min(1e-30)))
    posterior = torch.softmax(log_posterior, dim=0)
    refined[(classes, *box)] = posterior * share[box]
    return refined


def _local_means(weight: torch.Tensor, x: torch.Tensor, global_mean: torch.Tensor, sigma: Sequence[float],
                 factors: Sequence[int]) -> torch.Tensor:
    """Weighted means ``[T, C, d, h, w]`` of ``x`` around every voxel, each tissue's weights ``weight[t]``.

    ``G(w x) / G(w)`` with a Gaussian ``G`` of ``sigma`` voxels and zeros beyond the volume,
    leaning on the global mean where the tissue is (almost) absent. With ``factors > 1`` the
    weights and weighted intensities are averaged over blocks of ``factors`` voxels, smoothed
    there with ``sqrt(sigma^2 - (f^2 - 1) / 12) / f`` (the block average is itself a blur of
    variance ``(f^2 - 1) / 12``), divided, and the means upsampled trilinearly (voxel centres
    aligned, as ``align_corners=False``).
    """
    tissues, channels = weight.shape[0], x.shape[0]
    shape = tuple(x.shape[1:])
    stack = torch.cat([weight.unsqueeze(1), weight.unsqueeze(1) * x], dim=1)  # [T, 1 + C, d, h, w]
    stack = stack.reshape(1, tissues * (1 + channels), *shape)
    coarse = any(f > 1 for f in factors)
    if coarse:
        padding = []
        for n, f in zip(reversed(shape), reversed(factors)):
            padding += [0, -n % f]  # zeros beyond the volume, as the smoothing's constant mode
        stack = F.avg_pool3d(F.pad(stack, padding), kernel_size=tuple(factors), stride=tuple(factors))
        sigma = [math.sqrt(max(s * s - (f * f - 1) / 12, 0.0)) / f for s, f in zip(sigma, factors)]
    smoothed = gaussian_filter(stack, tuple(sigma), mode="constant")
    smoothed = smoothed.view(tissues, 1 + channels, *smoothed.shape[2:])
    means = (smoothed[:, 1:] + _LOCAL_PRIOR * global_mean) / (smoothed[:, :1] + _LOCAL_PRIOR)
    if coarse:
        padded = tuple(n + (-n % f) for n, f in zip(shape, factors))
        means = F.interpolate(means.reshape(1, tissues * channels, *means.shape[2:]), size=padded,
                              mode="trilinear", align_corners=False)
        means = means[..., : shape[0], : shape[1], : shape[2]].reshape(tissues, channels, *shape)
    return means


def _three(value, name: str, kind: type, minimum: float) -> tuple:
    values = (value,) * 3 if isinstance(value, numbers.Real) else tuple(value)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, numbers.Real) or v < minimum
                               or (kind is int and round(v) != v) for v in values):
        raise ValueError(f"refine_tissue_probabilities: {name} must be one number or three, each at least "
                         f"{minimum:g}{' (integers)' if kind is int else ''}, got {value!r}")
    return tuple(kind(v) for v in values)
