"""Smoothness penalties of displacement and velocity fields for deformable registration.

Both act on fields ``[B, 3, D, H, W]`` and return one value per sample ``[B]``, differentiable with
respect to the field:

- :func:`diffusion_energy`: the squared first derivatives (membrane / diffusion regularisation,
  VoxelMorph's ``Grad('l2')``, ANTs' and Thirion's diffusion-like smoothing);
- :func:`bending_energy`: the squared second derivatives, the thin-plate bending energy of
  free-form deformations (Rueckert et al., IEEE TMI 18, 1999). It does not penalise affine maps.

Derivatives are finite differences along the array axes divided by the voxel ``spacing`` (in the
units of the field: both in voxels by default, or the field in mm with the spacing in mm), and
each squared derivative is averaged over the voxels where its difference is defined, so the value
hardly depends on the grid size. Along an axis too short for a difference the derivative counts as 0.
"""

from __future__ import annotations

from typing import Any

import torch

from .jacobian import per_sample_spacing

__all__ = ["bending_energy", "diffusion_energy"]


def _check(field: Any, owner: str) -> torch.Tensor:
    if not isinstance(field, torch.Tensor) or field.ndim != 5:
        shape = tuple(field.shape) if isinstance(field, torch.Tensor) else type(field).__name__
        raise ValueError(f"{owner}: field must be [B, C, D, H, W], got {shape}")
    if not field.is_floating_point():
        raise TypeError(f"{owner}: field must be floating point, got {field.dtype}")
    return field.float() if field.dtype in (torch.float16, torch.bfloat16) else field


def _diff(u: torch.Tensor, axis: int) -> torch.Tensor:
    """Forward difference ``u[i + 1] - u[i]`` along spatial ``axis`` (0, 1, 2) of ``[B, C, D, H, W]``."""
    dim = 2 + axis
    n = u.shape[dim]
    return u.narrow(dim, 1, n - 1) - u.narrow(dim, 0, n - 1)


def _mean_square(derivative: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``mean over voxels of sum over components of (derivative / scale)**2``: ``[B]`` (``scale``: ``[B]``)."""
    per_sample = derivative.square().flatten(2).mean(dim=2).sum(dim=1)
    return per_sample / scale.square()


def diffusion_energy(field: torch.Tensor, spacing: Any = None) -> torch.Tensor:
    """``sum_k sum_j mean((du_k/dx_j)**2)`` of fields ``[B, C, D, H, W]``: ``[B]``.

    ``du_k/dx_j`` is the forward difference ``(u_k[i + 1] - u_k[i]) / h_j`` along axis ``j``, and
    its square is averaged over the ``n_j - 1`` positions where it is defined. A constant field
    gives 0 and a linear field ``u(x) = A x`` gives ``sum(A**2)``, the squared Frobenius norm of its
    gradient. VoxelMorph's ``Grad('l2')`` loss is this divided by ``3 C`` (it averages over the
    components and the axes instead of summing).

    Parameters
    ----------
    field:
        Floating-point fields ``[B, C, D, H, W]`` (``C = 3`` for a displacement; any ``C`` works).
    spacing:
        Voxel size along D, H, W in the units of the field: a number, 3 values, or ``[B, 3]``
        (metadata: a tensor is read on the host). ``None``: 1, i.e. a field in voxels.

    Example
    -------
    >>> u = torch.zeros(1, 3, 4, 4, 4)
    >>> u[:, 0] = 0.5 * torch.arange(4.0).view(4, 1, 1)      # du_D/dx_D = 0.5
    >>> diffusion_energy(u).tolist(), diffusion_energy(u, spacing=(2.0, 1.0, 1.0)).tolist()
    ([0.25], [0.0625])
    """
    u = _check(field, "diffusion_energy")
    steps = per_sample_spacing(spacing, u.shape[0], "diffusion_energy", u)
    energy = u.new_zeros(u.shape[0])
    for j in range(3):
        if u.shape[2 + j] > 1:
            energy = energy + _mean_square(_diff(u, j), steps[:, j])
    return energy


def bending_energy(field: torch.Tensor, spacing: Any = None) -> torch.Tensor:
    """``sum_k mean(u_xx**2 + u_yy**2 + u_zz**2 + 2 (u_xy**2 + u_xz**2 + u_yz**2))`` of fields ``[B, C, D, H, W]``.

    The discrete thin-plate bending energy per voxel (Rueckert et al. 1999), summed over the
    components ``u_k``. ``u_jj`` is the second difference ``(u[i + 1] - 2 u[i] + u[i - 1]) / h_j**2``
    (averaged over the ``n_j - 2`` inner positions), ``u_jl`` the forward difference along ``l`` of
    the forward difference along ``j`` over ``h_j h_l`` (averaged over the ``(n_j - 1)(n_l - 1)``
    positions it is defined at); each term is a mean of its own, so the sum is exact for every
    quadratic field: 0 for an affine field, ``4 a**2`` for ``a x_j**2`` and ``2 b**2`` for
    ``b x_j x_l``.

    Parameters
    ----------
    field, spacing:
        As in :func:`diffusion_energy`.

    Example
    -------
    >>> u = torch.zeros(1, 3, 5, 5, 5)
    >>> x = torch.arange(5.0)
    >>> u[:, 1] = 0.3 * x.view(5, 1, 1) + 0.1 * x.view(1, 1, 5)     # affine: no bending
    >>> u[:, 2] = 0.5 * x.view(5, 1, 1) * x.view(1, 5, 1)          # u_DH = 0.5
    >>> [round(v, 6) for v in bending_energy(u).tolist()]
    [0.5]
    """
    u = _check(field, "bending_energy")
    steps = per_sample_spacing(spacing, u.shape[0], "bending_energy", u)
    energy = u.new_zeros(u.shape[0])
    first = [_diff(u, j) if u.shape[2 + j] > 1 else None for j in range(3)]
    for j in range(3):
        dj = first[j]
        if dj is None:
            continue
        if u.shape[2 + j] > 2:
            energy = energy + _mean_square(_diff(dj, j), steps[:, j].square())
        for m in range(j + 1, 3):
            if first[m] is not None:
                energy = energy + 2 * _mean_square(_diff(dj, m), steps[:, j] * steps[:, m])
    return energy
