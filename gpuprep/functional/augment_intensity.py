"""Intensity augmentation math on batched tensors ``[B, C, D, H, W]``: noise, gamma, bias field, contrast.

Per-sample parameters arrive as small tensors ``[B]`` (or ``[B, n_terms]`` for bias-field
coefficients) on any device; they are moved next to the data and broadcast over the voxels, and
nothing is read back to the host. Voxel noise is drawn on the data's device from explicit
integer seeds, one ``torch.Generator`` per sample, so a sample's noise does not depend on the
batch it is in. Functions compute in float32 (float64 for float64 input) and return the input's
floating dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = [
    "adjust_contrast",
    "apply_noise",
    "bias_field",
    "bias_field_coordinates",
    "bias_field_terms",
    "draw_noise",
    "fill_standard_normal",
    "signed_power",
]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_sample(values, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B]`` values as a ``[B, 1, 1, 1, 1]`` tensor on ``x``'s device."""
    return torch.as_tensor(values, dtype=dtype).to(x.device).reshape(-1, *([1] * (x.ndim - 1)))


def draw_noise(
    x: torch.Tensor, seeds: Sequence[int], count: int = 1, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Standard normal noise ``[count, B, C, D, H, W]`` drawn on ``x``'s device, one seed per sample.

    Sample ``b`` is drawn by one ``torch.randn`` from ``torch.Generator(device=x.device)``
    seeded with ``seeds[b]``, so the same seed gives bit-identical noise whatever the batch.

    Parameters
    ----------
    x:
        Volume ``[B, C, D, H, W]`` giving the shape and device.
    seeds:
        ``B`` non-negative integers (below ``2**63``).
    count:
        Number of independent noise volumes per sample (2 for Rician noise).
    dtype:
        Dtype of the noise; default float32 (float64 for float64 input).

    Example
    -------
    >>> x = torch.zeros(2, 1, 4, 4, 4)
    >>> torch.equal(draw_noise(x, [5, 6])[0, 1], draw_noise(x[1:], [6])[0, 0])
    True
    """
    if len(seeds) != x.shape[0]:
        raise ValueError(f"draw_noise: need one seed per sample ({x.shape[0]}), got {len(seeds)}")
    dtype = dtype or _compute_dtype(x)
    noise = torch.empty((x.shape[0], count, *x.shape[1:]), device=x.device, dtype=dtype)
    # Per sample, so that its noise does not depend on its batch.
    fill_standard_normal([(noise[index], int(seed)) for index, seed in enumerate(seeds)])
    return noise.transpose(0, 1)


def fill_standard_normal(jobs: Sequence[tuple[torch.Tensor, int]]) -> None:
    """Fill each tensor in place with standard normal noise from ``torch.Generator`` seeded with its seed.

    Each tensor gets one ``normal_`` call (what ``torch.randn`` does) from its own generator, so
    its values do not depend on the others. On the CPU torch draws them on one thread each: with
    several threads allowed (``torch.get_num_threads()``), the tensors are filled concurrently.

    Example
    -------
    >>> a, b = torch.empty(3), torch.empty(3)
    >>> fill_standard_normal([(a, 1), (b, 1)])
    >>> torch.equal(a, b) and torch.equal(a, torch.randn(3, generator=torch.Generator().manual_seed(1)))
    True
    """
    def fill(job: tuple[torch.Tensor, int]) -> None:
        tensor, seed = job
        tensor.normal_(generator=torch.Generator(device=tensor.device).manual_seed(int(seed)))

    threads = min(torch.get_num_threads(), len(jobs))
    if threads > 1 and all(tensor.device.type == "cpu" for tensor, _ in jobs):
        with ThreadPoolExecutor(threads) as pool:  # a new pool per call: a forked DataLoader worker has none
            list(pool.map(fill, jobs))
    else:
        for job in jobs:
            fill(job)


def apply_noise(
    x: torch.Tensor, noise: torch.Tensor, mean, std, kind: str = "gaussian"
) -> torch.Tensor:
    """Add scaled noise: Gaussian ``x + mean + std * n`` or Rician ``sqrt((x + g1)^2 + g2^2)``.

    Parameters
    ----------
    x:
        Floating-point volume ``[B, C, D, H, W]``.
    noise:
        Standard normal noise ``[count, B, C, D, H, W]`` (from :func:`draw_noise`); Rician uses
        the first two volumes.
    mean, std:
        Per-sample ``[B]`` mean and standard deviation of the noise (``g = mean + std * n``).
    kind:
        ``"gaussian"`` or ``"rician"``.

    Reference
    ---------
    MONAI ``RandGaussianNoise`` (``x + N(mean, std)``) and ``RandRicianNoise``
    (``sqrt((x + N(mean, std))^2 + N(mean, std)^2)``).

    Example
    -------
    >>> x = torch.ones(1, 1, 2, 2, 2)
    >>> apply_noise(x, torch.zeros(2, 1, 1, 2, 2, 2), [0.5], [1.0]).unique().tolist()
    [1.5]
    """
    dtype = _compute_dtype(x)
    mean = _per_sample(mean, x, dtype)
    std = _per_sample(std, x, dtype)
    value = x.to(dtype)
    if kind == "gaussian":
        out = value + (mean + std * noise[0].to(dtype))
    elif kind == "rician":
        real = value + (mean + std * noise[0].to(dtype))
        imaginary = mean + std * noise[1].to(dtype)
        out = torch.sqrt(real * real + imaginary * imaginary)
    else:
        raise ValueError(f"apply_noise: kind must be 'gaussian' or 'rician', got {kind!r}")
    return out.to(x.dtype)


def signed_power(x: torch.Tensor, gamma) -> torch.Tensor:
    """``sign(x) * |x| ** gamma`` per sample: the gamma curve, odd-extended to negative values.

    For non-negative images this is ``x ** gamma``; negative intensities keep their sign, as in
    TorchIO's ``Gamma`` (which uses this form whenever the image has a negative value; the two
    agree everywhere else, so no data-dependent branch is needed).

    Parameters
    ----------
    x:
        Floating-point volume ``[B, C, D, H, W]``.
    gamma:
        Per-sample exponents ``[B]`` (> 0).

    Example
    -------
    >>> signed_power(torch.tensor([-4.0, 0.0, 4.0]).reshape(1, 1, 1, 1, 3), [0.5]).flatten().tolist()
    [-2.0, 0.0, 2.0]
    """
    dtype = _compute_dtype(x)
    gamma = _per_sample(gamma, x, dtype)
    value = x.to(dtype)
    return (torch.sign(value) * value.abs().pow(gamma)).to(x.dtype)


def bias_field_terms(order: int) -> list[tuple[int, int, int]]:
    """Exponents ``(i, j, k)`` on axes ``(D, H, W)`` of the polynomial terms, in TorchIO's order.

    Example
    -------
    >>> bias_field_terms(1)
    [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)]
    """
    return [
        (i, j, k)
        for i in range(order + 1)
        for j in range(order + 1 - i)
        for k in range(order + 1 - i - j)
    ]


def bias_field_coordinates(size: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Voxel-centre coordinates of one axis scaled to ``[-1, 1]`` (all zero for a single voxel).

    ``(i - (n - 1) / 2) / ((n - 1) / 2)``: TorchIO's ``np.arange(-n/2, n/2) + 0.5`` divided by
    its maximum.

    Example
    -------
    >>> bias_field_coordinates(5).tolist()
    [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    centre = (size - 1) / 2
    coords = torch.arange(size, device=device, dtype=dtype) - centre
    return coords / centre if size > 1 else coords


def bias_field(
    shape: Sequence[int], coefficients: torch.Tensor, order: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Multiplicative bias fields ``exp(polynomial)`` ``[B, 1, D, H, W]``, one per coefficient row.

    The polynomial is ``sum c_t * u^i * v^j * w^k`` over the terms of :func:`bias_field_terms`
    (total degree ``<= order``) with ``u, v, w`` the coordinates of :func:`bias_field_coordinates`
    along ``D, H, W``. It is evaluated separably: the coefficients are laid out as a cube
    ``[B, o+1, o+1, o+1]`` and contracted with the 1D power vectors one axis at a time
    (largest intermediate ``[B, o+1, H, W]``), never as a stack of full-size term volumes.

    Parameters
    ----------
    shape:
        Spatial shape ``(D, H, W)``.
    coefficients:
        ``[B, n_terms]`` with ``n_terms = (o+1)(o+2)(o+3)/6``; its device is the output's.
    order:
        Maximum total degree ``o``.
    dtype:
        Dtype of the computation and the result.

    Reference
    ---------
    TorchIO ``BiasField.generate_bias_field(data, order, coefficients)`` (float64 there, then
    cast to float32); same coordinates, term order and axes.

    Example
    -------
    >>> field = bias_field((4, 5, 6), torch.zeros(2, 20), order=3)
    >>> field.shape, field.unique().tolist()
    (torch.Size([2, 1, 4, 5, 6]), [1.0])
    """
    terms = bias_field_terms(order)
    coefficients = torch.as_tensor(coefficients, dtype=dtype)
    if coefficients.ndim != 2 or coefficients.shape[1] != len(terms):
        raise ValueError(
            f"bias_field: coefficients must be [B, {len(terms)}] for order {order}, got {tuple(coefficients.shape)}"
        )
    device = coefficients.device
    batch = coefficients.shape[0]
    size = order + 1
    index = torch.tensor([(i * size + j) * size + k for i, j, k in terms], device=device)
    cube = torch.zeros(batch, size**3, device=device, dtype=dtype)
    cube[:, index] = coefficients
    cube = cube.reshape(batch, size, size, size)
    powers = []
    for n in shape:
        coords = bias_field_coordinates(int(n), device, dtype)
        exponents = torch.arange(size, device=device, dtype=dtype)
        powers.append(coords[None, :] ** exponents[:, None])  # [o+1, n]; 0 ** 0 == 1
    # Contract W, then H, then D: [B,i,j,k] -> [B,i,j,W] -> [B,i,H,W] -> [B,D,H,W].
    field = torch.einsum("bijk,kw->bijw", cube, powers[2])
    field = torch.einsum("bijw,jh->bihw", field, powers[1])
    field = torch.einsum("bihw,id->bdhw", field, powers[0])
    return torch.exp(field)[:, None]


def adjust_contrast(x: torch.Tensor, factor, preserve_range: bool = False) -> torch.Tensor:
    """``mean + factor * (x - mean)`` with the mean of each channel of each sample.

    Parameters
    ----------
    x:
        Floating-point volume ``[B, C, D, H, W]``.
    factor:
        Per-sample factors ``[B]``; above 1 raises the contrast, below 1 lowers it.
    preserve_range:
        Clamp each channel to its own minimum and maximum before the change.

    Reference
    ---------
    batchgenerators' ``augment_contrast`` (nnU-Net's ``ContrastAugmentationTransform``) with
    ``per_channel`` statistics.

    Example
    -------
    >>> x = torch.tensor([0.0, 1.0, 2.0]).reshape(1, 1, 1, 1, 3)
    >>> adjust_contrast(x, [2.0]).flatten().tolist()
    [-1.0, 1.0, 3.0]
    """
    dtype = _compute_dtype(x)
    value = x.to(dtype)
    factor = _per_sample(factor, x, dtype)
    mean = value.mean(dim=(2, 3, 4), keepdim=True)
    out = (value - mean) * factor + mean
    if preserve_range:
        low = value.amin(dim=(2, 3, 4), keepdim=True)
        high = value.amax(dim=(2, 3, 4), keepdim=True)
        out = torch.minimum(torch.maximum(out, low), high)
    return out.to(x.dtype)
