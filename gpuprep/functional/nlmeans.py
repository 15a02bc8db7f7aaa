"""Non-local means denoising of batched volumes ``[B, C, D, H, W]`` (blockwise "fast" variant).

This is the algorithm of ``skimage.restoration.denoise_nl_means(fast_mode=True)`` on 3D data
(Darbon et al. 2008, Froment 2014), vectorised over voxels and over chunks of search shifts
instead of looping in Cython. For every voxel ``q`` and every shift ``t`` of the search cube
``[-d, d]^3``::

    dist_t(q) = sum over the box (q - o, q + o]^3 of ((u[x] - u[x + t])^2 - 2 sigma^2)
    w_t(q)    = exp(-max(dist_t(q), 0) / (s^3 h^2))   if that exponent is at most 5, else 0
    out[q]    = sum_t w_t(q) u[q + t] / sum_t w_t(q)

with ``s`` the patch size, ``o = s // 2``, ``d`` the patch distance and ``u`` the volume
extended as skimage pads it, with NumPy's ``'reflect'`` (``d c b | a b c d | c b a``, scipy's
``'mirror'``; *not* the half-sample ``'reflect'`` of scipy used by the other filters). Two
details of skimage's implementation are kept on purpose so that results agree:

- the patch distance is summed over ``s - 1`` voxels per axis, the half-open box
  ``(q - o, q + o]`` that skimage's integral-image differences cover, and normalised by ``s^3``;
- the weights use all ``(2d + 1)^3`` shifts at every voxel, including the border voxels (whose
  neighbours come from the reflected extension).

skimage evaluates the exponential with Schraudolph's bit-trick approximation (up to about 4 %
relative error on a weight); ``exact_exp=True`` (the default here) uses ``torch.exp`` instead,
and ``exact_exp=False`` reproduces skimage's approximation bit for bit.

The distance of shift ``t`` at ``q`` equals that of ``-t`` at ``q + t``, so only half of the
shifts are computed; each is used twice. Shifts are processed in chunks whose temporaries stay
within ``chunk_bytes``. :func:`nl_means_pixelwise` is the classic algorithm (skimage's
``fast_mode=False``), vectorised the same way.

References
----------
A. Buades, B. Coll and J.-M. Morel, "A non-local algorithm for image denoising", CVPR 2005.
:DOI:`10.1109/CVPR.2005.38`
J. Darbon, A. Cunha, T. F. Chan, S. Osher and G. J. Jensen, "Fast nonlocal filtering applied to
electron cryomicroscopy", ISBI 2008. :DOI:`10.1109/ISBI.2008.4541250`
J. Froment, "Parameter-free fast pixelwise non-local means denoising", IPOL 4, 2014.
:DOI:`10.5201/ipol.2014.120`
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from .filters import pad_volume

__all__ = ["nl_means", "nl_means_pixelwise"]

#: The largest patch side and search radius accepted. The volume is padded by ``2d + s/2`` voxels
#: per side and every voxel visits ``(2d+1)^3`` shifts (68,921 at the limit: hours for a brain),
#: so larger values only allocate and compute without end.
MAX_PATCH_SIZE = 21
MAX_PATCH_DISTANCE = 20


def check_patch(patch_size: int, patch_distance: int, owner: str = "nl_means") -> None:
    """Refuse a patch side that is even or outside 1..21, or a search radius outside 0..20.

    Example
    -------
    >>> check_patch(3, 2)
    >>> check_patch(3, 100)
    Traceback (most recent call last):
    ...
    ValueError: nl_means: patch_distance must be an integer from 0 to 20, got 100
    """
    if not (isinstance(patch_size, numbers.Integral) and 1 <= patch_size <= MAX_PATCH_SIZE and patch_size % 2 == 1):
        raise ValueError(f"{owner}: patch_size must be an odd integer from 1 to {MAX_PATCH_SIZE}, got {patch_size}")
    if not (isinstance(patch_distance, numbers.Integral) and 0 <= patch_distance <= MAX_PATCH_DISTANCE):
        raise ValueError(
            f"{owner}: patch_distance must be an integer from 0 to {MAX_PATCH_DISTANCE}, got {patch_distance}"
        )


#: skimage's DISTANCE_CUTOFF: weights whose exponent exceeds it are zero.
_DISTANCE_CUTOFF = 5.0
# Schraudolph (1999) constants used by skimage's fast_exp.h
_EXP_A = 1512775.3951951856938
_EXP_BC = 1072632447


def nl_means(
    x: torch.Tensor,
    patch_size: int = 3,
    patch_distance: int = 2,
    h: Any = 0.1,
    sigma: Any = 0.0,
    exact_exp: bool = True,
    chunk_bytes: int | None = None,
) -> torch.Tensor:
    """Blockwise non-local means of every ``[D, H, W]`` volume, as skimage's fast mode.

    Parameters
    ----------
    x:
        Floating-point volume ``[B, C, D, H, W]``; each channel of each sample is denoised on its
        own (skimage's ``channel_axis=None`` on each). Computation is in the input's precision
        (float32 for half).
    patch_size:
        Odd patch side ``s`` in voxels, at most :data:`MAX_PATCH_SIZE` (21).
    patch_distance:
        Search radius ``d`` in voxels (the search cube has side ``2d + 1``), at most
        :data:`MAX_PATCH_DISTANCE` (20).
    h:
        Cut-off in intensity units: a number or a tensor ``[B]`` / ``[B, C]`` (on any device), e.g.
        0.8 times an estimated noise sigma per volume.
    sigma:
        Known noise standard deviation subtracted from the patch distances (skimage's
        ``sigma``), a number or ``[B]`` / ``[B, C]``.
    exact_exp:
        Use ``torch.exp`` (True) or skimage's bit-trick approximation (False).
    chunk_bytes:
        Memory budget for the temporaries of one chunk of shifts; ``None``: 8 MiB on the CPU
        (cache-sized chunks are fastest there), 1 GiB on a GPU.

    Reference
    ---------
    ``skimage.restoration.denoise_nl_means(volume, patch_size, patch_distance, h, fast_mode=True,
    sigma=sigma, channel_axis=None)``; with ``exact_exp=False`` agreement is to float rounding.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> clean = torch.zeros(1, 1, 16, 16, 16); clean[..., 4:12, 4:12, 4:12] = 1
    >>> noisy = clean + 0.2 * torch.randn(clean.shape, generator=g)
    >>> out = nl_means(noisy, patch_size=3, patch_distance=2, h=0.2)
    >>> bool((out - clean).abs().mean() < (noisy - clean).abs().mean())
    True
    """
    if x.ndim != 5 or not x.is_floating_point():
        raise ValueError(f"nl_means: x must be a floating-point [B, C, D, H, W], got {x.dtype} {tuple(x.shape)}")
    check_patch(patch_size, patch_distance)
    batch, channels, *shape = x.shape
    work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    volumes = x.reshape(batch * channels, *shape).to(work)
    n = volumes.shape[0]
    offset, reach = patch_size // 2, int(patch_distance)
    box = patch_size - 1
    _check_numbers(h, sigma)
    h_values = _per_volume(h, batch, channels, volumes)
    sigma_values = _per_volume(sigma, batch, channels, volumes)
    # exponent = max(dist, 0) * scale with dist = sum_box (diff^2) - 2 sigma^2 box^3
    scale = _scalar_or_column(1.0 / (patch_size**3 * h_values * h_values), h, lambda v: 1.0 / (patch_size**3 * v * v))
    bias = _scalar_or_column(2.0 * sigma_values * sigma_values * box**3, sigma, lambda v: 2.0 * v * v * box**3)

    # pad so that every shifted box around every (possibly shifted) centre is inside
    margin = 2 * reach + offset
    padded = pad_volume(volumes, [(margin, margin)] * 3, "mirror")
    # weights are evaluated on the region of centres [-reach, N + reach): size N + 2 reach
    region = [s + 2 * reach for s in shape]
    # boxes of those centres span [-reach - offset + 1, N + reach + offset - 1]
    span = [r + box - 1 if box else r for r in region]
    base = margin - reach - offset + 1 if box else margin - reach  # padded index of the span start
    reference = padded[(slice(None), *(slice(base, base + s) for s in span))]

    shifts = [t for t in itertools.product(range(-reach, reach + 1), repeat=3) if t > (0, 0, 0)]
    # the zero shift: distance <= 0, so weight exp(0) (0.971 with skimage's approximation)
    zero_weight = float(_fast_exp(torch.zeros((), dtype=work))) if not exact_exp else 1.0
    numerator = volumes * zero_weight
    denominator = torch.full_like(volumes, zero_weight)
    if chunk_bytes is None:
        chunk_bytes = 8 * 2**20 if volumes.device.type == "cpu" else 2**30
    chunk = max(1, int(chunk_bytes // (3 * n * _prod(span) * volumes.element_size())))
    buffer = volumes.new_empty((min(chunk, len(shifts)), n, *span))
    centre = tuple(slice(margin, margin + s) for s in shape)
    forward = (slice(None), *(slice(reach, reach + s) for s in shape))
    for start in range(0, len(shifts), chunk):
        group = shifts[start : start + chunk]
        squared = buffer[: len(group)]
        for k, t in enumerate(group):
            moved = padded[(slice(None), *(slice(base + ti, base + ti + s) for ti, s in zip(t, span)))]
            torch.sub(moved, reference, out=squared[k])
        squared.mul_(squared)
        distance = _box_sum(squared, box) if box else squared.new_zeros((len(group), n, *region))
        weights = _weights(distance, scale, bias, exact_exp)
        for k, t in enumerate(group):
            # w_t(q) multiplies u[q + t]; w_t(q - t) = w_{-t}(q) multiplies u[q - t]
            w_forward = weights[k][forward]
            w_backward = weights[k][(slice(None), *(slice(reach - ti, reach - ti + s) for ti, s in zip(t, shape)))]
            plus = tuple(slice(c.start + ti, c.stop + ti) for c, ti in zip(centre, t))
            minus = tuple(slice(c.start - ti, c.stop - ti) for c, ti in zip(centre, t))
            numerator.addcmul_(w_forward, padded[(slice(None), *plus)])
            numerator.addcmul_(w_backward, padded[(slice(None), *minus)])
            denominator.add_(w_forward).add_(w_backward)
    out = numerator / denominator
    return out.reshape(x.shape).to(x.dtype)


def nl_means_pixelwise(
    x: torch.Tensor,
    patch_size: int = 3,
    patch_distance: int = 2,
    h: Any = 0.1,
    sigma: Any = 0.0,
    exact_exp: bool = True,
    chunk_bytes: int | None = None,
) -> torch.Tensor:
    """Classic (pixelwise, Gaussian-weighted patches) non-local means, as skimage's slow mode.

    The algorithm of ``denoise_nl_means(fast_mode=False)`` on 3D (Buades et al. 2005): the
    patch distance weights the ``s^3`` voxels of a patch by a Gaussian of standard deviation
    ``(s - 1) / 4`` normalised to sum ``1 / h^2``; neighbours come only from inside the volume
    (the search window is clipped at the border; patches are extended by NumPy's ``'reflect'``);
    and, as skimage does, a weight is zero as soon as the partial distance over the first
    patch planes exceeds 5. Vectorised over voxels and chunks of shifts. ``patch_size=1`` uses a
    weight of 1 (skimage divides by zero there).

    Parameters and reference are those of :func:`nl_means` with ``fast_mode=False``; agreement
    with skimage is to float rounding when ``exact_exp=False`` (float64 input).

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> noisy = torch.rand(1, 1, 8, 8, 8, generator=g)
    >>> nl_means_pixelwise(noisy, 3, 1, h=0.3).shape
    torch.Size([1, 1, 8, 8, 8])
    """
    if x.ndim != 5 or not x.is_floating_point():
        raise ValueError(f"nl_means: x must be a floating-point [B, C, D, H, W], got {x.dtype} {tuple(x.shape)}")
    check_patch(patch_size, patch_distance)
    batch, channels, *shape = x.shape
    work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    volumes = x.reshape(batch * channels, *shape).to(work)
    offset, reach = patch_size // 2, int(patch_distance)
    _check_numbers(h, sigma)
    h_values = _per_volume(h, batch, channels, volumes)
    sigma_values = _per_volume(sigma, batch, channels, volumes)
    gauss = _patch_gaussian(patch_size)
    inverse_h2 = (1.0 / (h_values * h_values)).view(1, -1, 1, 1, 1)
    bias = (2.0 * sigma_values * sigma_values).view(1, -1, 1, 1, 1)
    margin = offset + reach
    padded = pad_volume(volumes, [(margin, margin)] * 3, "mirror")
    centre = tuple(slice(margin, margin + s) for s in shape)
    numerator = torch.zeros_like(volumes)
    denominator = torch.zeros_like(volumes)
    shifts = list(itertools.product(range(-reach, reach + 1), repeat=3))
    span = [s + 2 * offset for s in shape]
    chunk = _shifts_per_chunk(volumes, span, chunk_bytes)
    reference = padded[(slice(None), *(slice(reach, reach + s) for s in span))]
    for start in range(0, len(shifts), chunk):
        group = shifts[start : start + chunk]
        moved = torch.stack(
            [padded[(slice(None), *(slice(reach + ti, reach + ti + s) for ti, s in zip(t, span)))] for t in group]
        )
        weights = _patch_weights(moved - reference, bias, gauss, inverse_h2, shape, exact_exp)
        for k, t in enumerate(group):
            inside = _inside_mask(t, shape, volumes.device)
            w = weights[k] * inside
            shifted = padded[(slice(None), *(slice(c.start + ti, c.stop + ti) for c, ti in zip(centre, t)))]
            numerator.addcmul_(w, shifted)
            denominator.add_(w)
    out = numerator / denominator
    return out.reshape(x.shape).to(x.dtype)


def _patch_gaussian(patch_size: int) -> list[float]:
    """The taps weighting a patch axis: a Gaussian of std ``(s - 1) / 4`` summing to 1; ``[1.0]`` for ``s = 1``."""
    if patch_size <= 1:
        return [1.0]
    offset = patch_size // 2
    spread = (patch_size - 1) / 4.0
    grid = torch.arange(-offset, offset + 1, dtype=torch.float64)
    gauss = torch.exp(-(grid * grid) / (2 * spread * spread))
    return (gauss / gauss.sum()).tolist()


def _shifts_per_chunk(volumes: torch.Tensor, span: list[int], chunk_bytes: int | None) -> int:
    """Shifts per chunk: three ``span``-sized copies each within ``chunk_bytes`` (None: 8 MiB CPU, 1 GiB GPU)."""
    voxels = volumes.shape[0] * _prod(span)
    if chunk_bytes is None:
        chunk_bytes = 8 * 2**20 if volumes.device.type == "cpu" else 2**30
    return max(1, int(chunk_bytes // (3 * voxels * volumes.element_size())))


def _patch_weights(difference: torch.Tensor, bias: torch.Tensor, gauss: list[float], inverse_h2: torch.Tensor,
                   shape: list[int], exact_exp: bool) -> torch.Tensor:
    """Weights ``[K, N, D, H, W]`` of a chunk of K shifts from ``moved - reference`` (overwritten) on the patch span.

    ``exp(-max(d, 0))`` of the Gaussian-weighted patch distance ``d``; zero where the partial
    distance over the first patch planes already exceeds ``_DISTANCE_CUTOFF`` (skimage stops there).
    """
    energy = difference.pow_(2).sub_(bias)
    # Gaussian-weighted sums over the patch rows and columns (valid part), plane by plane
    for dim in (-2, -1):
        energy = _weighted_window(energy, gauss, dim)
    partial = None
    cut = torch.zeros(energy.shape[:2] + tuple(shape), dtype=torch.bool, device=energy.device)
    for a, weight in enumerate(gauss):
        term = energy.narrow(-3, a, shape[0]) * (weight * inverse_h2)
        if partial is None:
            partial = term
        else:
            cut |= partial > _DISTANCE_CUTOFF
            partial = partial + term
    if partial is None:  # an empty kernel: no patch term at all
        raise ValueError("the patch Gaussian has no weights")
    exponent = partial.clamp_(min=0)
    weights = torch.exp(-exponent) if exact_exp else _fast_exp(-exponent)
    return weights.masked_fill_(cut, 0.0)


def _weighted_window(values: torch.Tensor, taps: list[float], dim: int) -> torch.Tensor:
    """Valid correlation of ``values`` along ``dim`` with ``taps``."""
    size = values.shape[dim] - len(taps) + 1
    out = values.narrow(dim, 0, size) * taps[0]
    for k in range(1, len(taps)):
        out.add_(values.narrow(dim, k, size), alpha=taps[k])
    return out


def _inside_mask(shift: Sequence[int], shape: list[int], device: Any) -> torch.Tensor:
    """1 where ``q + shift`` lies inside the volume, else 0: ``[D, H, W]``."""
    masks = []
    for axis, (t, n) in enumerate(zip(shift, shape)):
        index = torch.arange(n, device=device) + t
        view = [1, 1, 1]
        view[axis] = n
        masks.append(((index >= 0) & (index < n)).view(view))
    return masks[0] & masks[1] & masks[2]


def _weights(distance: torch.Tensor, scale: Any, bias: Any, exact_exp: bool) -> torch.Tensor:
    """``exp(-max(distance - bias, 0) * scale)``, zero where that exponent exceeds 5 (in place)."""
    exponent = distance
    if not (isinstance(bias, float) and bias == 0.0):
        exponent = exponent.sub_(bias).clamp_(min=0)
    exponent = exponent.mul_(scale)
    beyond = exponent > _DISTANCE_CUTOFF
    weights = exponent.neg_().exp_() if exact_exp else _fast_exp(exponent.neg_())
    return weights.masked_fill_(beyond, 0.0)


def _scalar_or_column(values: torch.Tensor, given: Any, formula) -> Any:
    """A Python float when the argument was a number (cheaper ops), else a ``[1, N, 1, 1, 1]`` column."""
    if isinstance(given, (int, float)):
        return float(formula(float(given)))
    return values.view(1, -1, 1, 1, 1)


def _box_sum(values: torch.Tensor, box: int) -> torch.Tensor:
    """Sum over ``box`` consecutive voxels along each of the last three axes (valid part only)."""
    out = values
    for dim in (-3, -2, -1):
        size = out.shape[dim] - box + 1
        total = out.narrow(dim, 0, size) + out.narrow(dim, 1, size)
        for k in range(2, box):
            total += out.narrow(dim, k, size)
        out = total
    return out


def _fast_exp(y: torch.Tensor) -> torch.Tensor:
    """Schraudolph's exp approximation as in skimage's ``fast_exp.h`` (for ``-80 <= y <= 0``).

    skimage builds a double whose high 32 bits are ``int(EXP_A * y) + EXP_BC`` and whose low bits
    are zero. In float64 that is reproduced bit for bit. In float32 the same number (its 20-bit
    mantissa fits) is assembled directly as float32 bits, which avoids 8-byte temporaries; the
    product ``EXP_A * y`` is then rounded to float32, which can move the integer by one unit of
    2^-20 in the weight.
    """
    if y.dtype == torch.float64:
        high = (y * _EXP_A).to(torch.int64) + _EXP_BC  # the cast truncates toward zero, as C does
        return (high << 32).view(torch.float64)
    high = torch.clamp(y.to(torch.float32), min=-80.0).mul_(_EXP_A).to(torch.int32).add_(_EXP_BC)
    mantissa = high.bitwise_and(0xFFFFF).bitwise_left_shift_(3)
    bits = high.bitwise_right_shift_(20).sub_(1023 - 127).bitwise_left_shift_(23).bitwise_or_(mantissa)
    return bits.view(torch.float32).to(y.dtype)


def _per_volume(value: Any, batch: int, channels: int, like: torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=like.dtype).to(like.device)
    if tensor.ndim == 0:
        return tensor.expand(batch * channels)
    if tensor.shape == (batch,):
        return tensor.repeat_interleave(channels)
    if tensor.shape == (batch, channels):
        return tensor.reshape(-1)
    raise ValueError(f"expected a number, [B] or [B, C] = [{batch}, {channels}], got {tuple(tensor.shape)}")


def _check_numbers(h: Any, sigma: Any) -> None:
    """Reject a non-positive number ``h`` or a negative number ``sigma`` (tensors are not read)."""
    if isinstance(h, (int, float)) and not h > 0:
        raise ValueError(f"nl_means: h must be > 0, got {h!r}")
    if isinstance(sigma, (int, float)) and not sigma >= 0:
        raise ValueError(f"nl_means: sigma must be >= 0, got {sigma!r}")


def _prod(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out
