"""K-space (Fourier) artefacts on batched tensors ``[B, C, D, H, W]``: ghosting, spikes, Gibbs ringing.

The spectrum is the centred 3D FFT of each channel over the three spatial dims
(``fftshift(fftn(x))``, TorchIO's and MONAI's convention); the artefact edits it, and the image
comes back as the real part of the inverse. All samples of a batch go through one FFT; the
per-sample parameters (plain Python numbers) become small factor or index tensors moved next to
the data, so nothing is read back to the host. Computation is in complex64 (complex128 for float64
input) and the result has the input's floating dtype. Samples whose parameters make the artefact
vanish (zero intensity, no ghosts, no spikes) come back bit for bit unchanged, as in TorchIO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["centered_fft", "centered_ifft", "ghosting", "gibbs_lowpass", "spike", "spike_indices"]

_SPATIAL = (-3, -2, -1)


def _real_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def centered_fft(x: torch.Tensor) -> torch.Tensor:
    """Centred spectrum ``fftshift(fftn(x))`` over the last three dims (complex64, or complex128 for float64).

    Example
    -------
    >>> k = centered_fft(torch.ones(1, 1, 4, 4, 4))
    >>> k[0, 0, 2, 2, 2].real.item(), round(k.abs().sum().item() - 64, 6)
    (64.0, 0.0)
    """
    return torch.fft.fftshift(torch.fft.fftn(x.to(_real_dtype(x)), dim=_SPATIAL), dim=_SPATIAL)


def centered_ifft(k: torch.Tensor) -> torch.Tensor:
    """Real part of ``ifftn(ifftshift(k))`` over the last three dims: the inverse of :func:`centered_fft`.

    Example
    -------
    >>> x = torch.rand(2, 1, 5, 4, 3)
    >>> torch.allclose(centered_ifft(centered_fft(x)), x, atol=1e-6)
    True
    """
    return torch.fft.ifftn(torch.fft.ifftshift(k, dim=_SPATIAL), dim=_SPATIAL).real


def _keep(x: torch.Tensor, out: torch.Tensor, changed: Sequence[bool]) -> torch.Tensor:
    """``out`` in x's dtype, with the samples not ``changed`` taken from ``x`` unchanged."""
    out = out.to(x.dtype)
    if all(changed):
        return out
    mask = torch.tensor(changed, dtype=torch.bool).to(x.device).reshape(-1, 1, 1, 1, 1)
    return torch.where(mask, out, x)


def ghosting(
    x: torch.Tensor,
    num_ghosts: Sequence[int],
    axes: Sequence[int],
    intensity: Sequence[float],
    restore: Sequence[float | None],
) -> torch.Tensor:
    """MRI ghosting: scale every ``num_ghosts``-th k-space plane along ``axis`` by ``1 - intensity``.

    Per sample ``b``: in the centred spectrum, the planes ``0, n, 2n, ...`` (``n = num_ghosts[b]``)
    along spatial axis ``axes[b]`` (0, 1, 2 for D, H, W) are multiplied by ``1 - intensity[b]``,
    except the central band ``[m - s // 2, m + s // 2)`` with ``m = size // 2`` and
    ``s = round(restore[b] * size)``, which keeps its values (``restore[b] = None``: the band is
    the central plane alone). The mask is separable, so the whole batch is one product of three
    per-axis factors. Samples with ``n = 0`` or ``intensity = 0`` are returned unchanged.

    Reference
    ---------
    TorchIO ``torchio.transforms.augmentation.intensity.random_ghosting.Ghosting``.

    Example
    -------
    >>> x = torch.rand(2, 1, 8, 8, 8)
    >>> y = ghosting(x, [2, 0], [0, 1], [1.0, 0.5], [0.02, None])
    >>> torch.equal(y[1], x[1]), torch.allclose(y[0], x[0])
    (True, False)
    """
    batch = x.shape[0]
    if not (len(num_ghosts) == len(axes) == len(intensity) == len(restore) == batch):
        raise ValueError(f"ghosting: need one parameter of each kind per sample ({batch})")
    changed = [bool(n) and bool(s) for n, s in zip(num_ghosts, intensity)]
    if not any(changed):
        return x
    dtype = _real_dtype(x)
    factors = [torch.ones(batch, size, dtype=dtype) for size in x.shape[2:]]
    for b in range(batch):
        if not changed[b]:
            continue
        axis, size = axes[b], x.shape[2 + axes[b]]
        factor = factors[axis][b]
        factor[:: num_ghosts[b]] = 1.0 - float(intensity[b])
        middle = size // 2
        kept = restore[b]
        if kept is None:
            factor[middle] = 1.0
        else:
            half = round(kept * size) // 2  # numpy's round, as TorchIO (half to even)
            factor[middle - half : middle + half] = 1.0
    k = centered_fft(x)
    k = k * factors[0].to(x.device).reshape(batch, 1, -1, 1, 1)
    k = k * factors[1].to(x.device).reshape(batch, 1, 1, -1, 1)
    k = k * factors[2].to(x.device).reshape(batch, 1, 1, 1, -1)
    return _keep(x, centered_ifft(k), changed)


def spike_indices(positions: Sequence[Sequence[float]], shape: Sequence[int]) -> list[tuple[int, ...]]:
    """K-space voxel ``floor(position * shape)`` of each relative spike position in ``[0, 1)^3``.

    Example
    -------
    >>> spike_indices([[0.0, 0.5, 0.99]], (4, 4, 4))
    [(0, 2, 3)]
    """
    return [tuple(min(math.floor(p * n), n - 1) for p, n in zip(position, shape)) for position in positions]


def spike(x: torch.Tensor, positions: Sequence[Sequence[Sequence[float]]], intensity: Sequence[float]) -> torch.Tensor:
    """MRI spike (herringbone) artefact: add ``intensity * max|k|`` at a few k-space voxels.

    Per sample ``b`` and channel, for each relative position ``(u, v, w)`` of ``positions[b]`` in
    turn, the centred spectrum at voxel ``floor((u, v, w) * shape)`` gets ``intensity[b]`` times
    the current maximum modulus of that channel's spectrum added (the maximum is taken again
    after each spike, as TorchIO does). Samples with no spikes or zero intensity are returned
    unchanged.

    Reference
    ---------
    TorchIO ``torchio.transforms.augmentation.intensity.random_spike.Spike``.

    Example
    -------
    >>> x = torch.rand(2, 1, 6, 6, 6)
    >>> y = spike(x, [[[0.1, 0.5, 0.5]], []], [2.0, 1.0])
    >>> torch.equal(y[1], x[1]), torch.allclose(y[0], x[0])
    (True, False)
    """
    batch = x.shape[0]
    if not (len(positions) == len(intensity) == batch):
        raise ValueError(f"spike: need one position list and one intensity per sample ({batch})")
    changed = [bool(len(p)) and bool(s) for p, s in zip(positions, intensity)]
    if not any(changed):
        return x
    k = centered_fft(x)
    shape = x.shape[2:]
    indices = [spike_indices(p, shape) if c else [] for p, c in zip(positions, changed)]
    rows = torch.arange(batch).to(x.device)
    for slot in range(max(len(i) for i in indices)):  # spike by spike, each with the current maximum
        active = [len(i) > slot for i in indices]
        where = [i[slot] if a else (0, 0, 0) for i, a in zip(indices, active)]
        scale = torch.tensor([float(s) if a else 0.0 for s, a in zip(intensity, active)], dtype=k.real.dtype)
        i, j, m = (torch.tensor([w[d] for w in where]).to(x.device) for d in range(3))
        peak = k.abs().amax(dim=_SPATIAL)  # [B, C]
        k[rows, :, i, j, m] = k[rows, :, i, j, m] + peak * scale.to(x.device)[:, None]
    return _keep(x, centered_ifft(k), changed)


def gibbs_lowpass(x: torch.Tensor, alpha: Sequence[float]) -> torch.Tensor:
    """Gibbs ringing: keep the k-space inside a ball of radius ``(1 - alpha) * max(shape) / sqrt(2)``.

    Per sample, the centred spectrum is zeroed at voxels farther than
    ``r = (1 - alpha) * max(D, H, W) * sqrt(2) / 2`` from the centre ``(shape - 1) / 2`` (in
    voxel units), then transformed back. ``alpha = 0`` keeps nearly everything (the image up to FFT
    round-off, though MONAI's ball leaves out the corners of k-space), ``alpha = 1`` keeps only a
voxel lying exactly on the centre (none for even sizes: the output is then zero).

    Reference
    ---------
    MONAI ``monai.transforms.GibbsNoise(alpha)`` (its ``_apply_mask``).

    Example
    -------
    >>> y = gibbs_lowpass(torch.ones(2, 1, 8, 8, 8), [0.0, 1.0])  # DC kept, then removed
    >>> round(y[0].mean().item(), 6), round(y[1].abs().max().item(), 6)
    (1.0, 0.0)
    """
    batch = x.shape[0]
    if len(alpha) != batch:
        raise ValueError(f"gibbs_lowpass: need one alpha per sample ({batch}), got {len(alpha)}")
    shape = x.shape[2:]
    coords = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) ** 2 for n in shape]
    distance = (coords[0][:, None, None] + coords[1][None, :, None] + coords[2][None, None, :]).sqrt()
    radius = torch.tensor([(1 - float(a)) * max(shape) * math.sqrt(2) / 2.0 for a in alpha], dtype=torch.float64)
    mask = (distance[None] <= radius[:, None, None, None]).to(_real_dtype(x))
    return centered_ifft(centered_fft(x) * mask.to(x.device)[:, None]).to(x.dtype)
