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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..functional.filters import gaussian_filter

__all__ = ["refine_tissue_probabilities"]


def refine_tissue_probabilities(probabilities: torch.Tensor, image: torch.Tensor,
                                tissue_classes: Sequence[int], local_sigma: Sequence[float] | None = None
                                ) -> torch.Tensor:
    """Posterior tissue probabilities from network priors and a Gaussian intensity model per tissue.

    For each tissue ``k`` in ``tissue_classes`` the mean and variance of every image channel are
    averages weighted by ``probabilities[k]`` (the mean over the whole image, or around each voxel
    with ``local_sigma``; the variance over the whole image); each voxel's tissue share is
    then split in proportion to ``p_k * N(x; mean_k, var_k)`` (channels independent). The other
    classes (background) keep their probabilities, so the result still sums to 1 wherever the
    input did.

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
    p = probabilities.float()
    x = image.to(p.device, torch.float32)
    # Sums in float64: millions of voxels, and the variance is a difference of large terms.
    x64 = x.double()
    # A floor for the variance, relative to the image's own spread: a tissue the network puts on
    # constant voxels (zeros outside a stripped brain) must not become an infinitely sharp spike.
    floor = (x64.flatten(1).var(dim=1) * 1e-4).clamp_min(1e-12)
    log_posterior = []
    for k in classes:
        weight = p[k].double()
        total = weight.sum().clamp_min(1e-12)
        mean = ((weight * x64).flatten(1).sum(1) / total).view(-1, 1, 1, 1)
        if local_sigma is not None:
            mean = _local_mean(p[k], x, mean.float(), local_sigma).double()
        var = torch.maximum((weight * (x64 - mean) ** 2).flatten(1).sum(1) / total, floor)
        log_likelihood = (-0.5 * (x - mean.float()) ** 2 / var.view(-1, 1, 1, 1).float()
                          - 0.5 * torch.log(var).view(-1, 1, 1, 1).float()).sum(0)
        log_posterior.append(torch.log(p[k].clamp_min(1e-30)) + log_likelihood)
    posterior = torch.softmax(torch.stack(log_posterior), dim=0)
    tissue_share = p[classes].sum(0, keepdim=True)
    refined = p.clone()
    refined[classes] = posterior * tissue_share
    return refined


def _local_mean(weight: torch.Tensor, x: torch.Tensor, global_mean: torch.Tensor,
                sigma: Sequence[float]) -> torch.Tensor:
    """Weighted mean of ``x`` around every voxel; where the tissue is (almost) absent, its global mean."""
    weights = gaussian_filter(weight[None, None], tuple(sigma), mode="constant")[0]
    weighted = gaussian_filter((weight * x)[:, None], tuple(sigma), mode="constant")[:, 0]
    # A voxel's local mean leans on the global one until the smoothed weight reaches about 5 %.
    prior = 0.05
    return (weighted + prior * global_mean) / (weights + prior)
