"""World-space transform models for registration: rigid (6 parameters) and affine (12), batched and differentiable.

A transform maps a point of the fixed image's world (RAS mm) to the moving image's world, about
a centre ``c``: ``y = L (x - c) + c + t``. The rigid model's ``L`` is the rotation of a rotation
vector (axis times angle in radians, Rodrigues' formula); the affine model's ``L`` is any 3 x 3
matrix. Matrices are ``[B, 4, 4]``, in the dtype and on the device of the parameters.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch

from .numba_threads import pick_kernel

__all__ = [
    "center_of_mass",
    "compose_matrices",
    "homogeneous",
    "map_points",
    "rotation_from_vector",
    "sample_voxels_fast",
    "sample_world",
    "sample_world_fast",
    "vector_from_rotation",
    "with_world_gradient",
    "world_matrix",
]


def rotation_from_vector(vector: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[B, 3, 3]`` of rotation vectors ``[B, 3]`` (Rodrigues), smooth at the zero rotation.

    Example
    -------
    >>> import math
    >>> r = rotation_from_vector(torch.tensor([[0.0, 0.0, math.pi / 2]], dtype=torch.float64))
    >>> (r[0] @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)).round(decimals=6).tolist()
    [0.0, 1.0, 0.0]
    """
    angle_sq = (vector * vector).sum(-1, keepdim=True)[..., None]  # [B, 1, 1]
    small = angle_sq < 1e-8
    safe = torch.where(small, torch.ones_like(angle_sq), angle_sq)
    angle = safe.sqrt()
    # sin(a)/a and (1 - cos(a))/a^2, with their Taylor series near 0 (where the division would lose precision)
    sin_term = torch.where(small, 1.0 - angle_sq / 6.0, torch.sin(angle) / angle)
    cos_term = torch.where(small, 0.5 - angle_sq / 24.0, (1.0 - torch.cos(angle)) / safe)
    x, y, z = vector.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*vector.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=vector.dtype, device=vector.device).expand_as(cross)
    return eye + sin_term * cross + cos_term * (cross @ cross)


def vector_from_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """The rotation vectors ``[B, 3]`` of rotation matrices ``[B, 3, 3]`` (angles below pi).

    Example
    -------
    >>> v = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)
    >>> torch.allclose(vector_from_rotation(rotation_from_vector(v)), v)
    True
    """
    cosine = ((rotation.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    angle = torch.acos(cosine)
    axis = torch.stack([rotation[..., 2, 1] - rotation[..., 1, 2], rotation[..., 0, 2] - rotation[..., 2, 0],
                        rotation[..., 1, 0] - rotation[..., 0, 1]], dim=-1)
    scale = torch.where(angle < 1e-6, 0.5 + angle**2 / 12.0, angle / (2.0 * torch.sin(angle).clamp(min=1e-12)))
    return axis * scale[..., None]


def homogeneous(linear: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """``[B, 4, 4]`` matrices from ``linear [B, 3, 3]`` and ``translation [B, 3]``.

    Example
    -------
    >>> homogeneous(torch.eye(3)[None], torch.tensor([[1.0, 2.0, 3.0]]))[0, :, 3].tolist()
    [1.0, 2.0, 3.0, 1.0]
    """
    top = torch.cat([linear, translation[..., None]], dim=-1)
    bottom = torch.zeros(*linear.shape[:-2], 1, 4, dtype=linear.dtype, device=linear.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def world_matrix(linear: torch.Tensor, translation: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """The transform ``y = linear (x - center) + center + translation`` as ``[B, 4, 4]`` matrices.

    Example
    -------
    >>> m = world_matrix(2 * torch.eye(3)[None], torch.zeros(1, 3), torch.tensor([[1.0, 1.0, 1.0]]))
    >>> (m[0] @ torch.tensor([1.0, 1.0, 1.0, 1.0])).tolist()    # the centre stays put
    [1.0, 1.0, 1.0, 1.0]
    """
    offset = center + translation - (linear @ center[..., None])[..., 0]
    return homogeneous(linear, offset)


def map_points(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``matrix [B, 4, 4]`` applied to ``points [B, N, 3]``, differentiable.

    Written as three broadcast multiply-adds rather than a batched matrix product: as fast, and
    each sample's result is the same bits in a batch as alone (a batched product's blocking
    depends on the batch size).

    Example
    -------
    >>> shift = torch.eye(4)[None].clone(); shift[0, :3, 3] = 1.0
    >>> map_points(shift, torch.zeros(1, 2, 3)).tolist()
    [[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]
    """
    linear = matrix.to(points.dtype)[:, None, :3, :3]  # [B, 1, 3, 3]
    return (points[..., 0:1] * linear[..., 0] + points[..., 1:2] * linear[..., 1] + points[..., 2:3] * linear[..., 2]
            + matrix.to(points.dtype)[:, None, :3, 3])


def compose_matrices(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``first @ second`` for ``[B, 4, 4]`` matrices, differentiable, each sample's bits the same in a batch as alone.

    Broadcast products summed over the inner axis, as :func:`map_points`, instead of a batched
    matrix product (whose blocking depends on the batch size).

    Example
    -------
    >>> shift = torch.eye(4)[None].clone(); shift[0, 0, 3] = 2.0
    >>> scale = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0]))[None]
    >>> compose_matrices(shift, scale)[0, 0].tolist()              # scale first, then shift
    [3.0, 0.0, 0.0, 2.0]
    """
    return (first[:, :, :, None] * second[:, None, :, :]).sum(dim=2)


def center_of_mass(volume: torch.Tensor, affine: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The intensity-weighted centre ``[B, 3]`` (world mm) of ``volume [B, C, D, H, W]`` (negative values count 0).

    ``affine`` is ``[B, 4, 4]`` (or ``[4, 4]``) voxel-to-world. An image of zeros gives its grid's centre.

    Example
    -------
    >>> x = torch.zeros(1, 1, 5, 5, 5); x[0, 0, 1, 2, 3] = 1.0
    >>> center_of_mass(x, torch.eye(4, dtype=torch.float64)).tolist()
    [[1.0, 2.0, 3.0]]
    """
    weights = volume.detach().float().clamp(min=0).sum(1)
    if mask is not None:
        weights = weights * mask.reshape(weights.shape).to(weights.dtype)
    profiles = [weights.sum(dim=(2, 3)), weights.sum(dim=(1, 3)), weights.sum(dim=(1, 2))]  # per axis, float32
    total = profiles[0].to(torch.float64).sum(1)
    sizes = torch.tensor(weights.shape[1:], dtype=torch.float64, device=volume.device)
    index = torch.stack([(profile.to(torch.float64) * torch.arange(len(profile[0]), dtype=torch.float64,
                                                                   device=volume.device)).sum(1)
                         for profile in profiles], dim=1) / total.clamp(min=1e-300)[:, None]
    index = torch.where(total[:, None] > 0, index, (sizes - 1) / 2)
    affine = affine.to(torch.float64).to(volume.device).expand(len(index), 4, 4)
    return (affine[:, :3, :3] @ index[..., None])[..., 0] + affine[:, :3, 3]


def _sampling_grid(shape: Sequence[int], world_to_voxel: torch.Tensor, points: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """``grid_sample``'s grid ``[B, N, 1, 1, 3]`` (align_corners=True, (W, H, D) order) for ``points [B, N, 3]``."""
    voxel = map_points(world_to_voxel, points)
    sizes = torch.tensor(list(shape), dtype=points.dtype, device=points.device)
    normalised = 2.0 * voxel / (sizes - 1).clamp(min=1) - 1.0  # -1 and 1 are the end voxels
    return normalised.flip(-1)[:, :, None, None, :].to(dtype)


def sample_world(volume: torch.Tensor, world_to_voxel: torch.Tensor, points: torch.Tensor,
                 padding_mode: str = "zeros") -> torch.Tensor:
    """Trilinear values ``[B, C, N]`` of ``volume [B, C, D, H, W]`` at world ``points [B, N, 3]``.

    ``world_to_voxel`` ``[B, 4, 4]`` is the inverse of the volume's affine. Differentiable with
    respect to the points (and the volume). Beyond the grid: zeros (``"zeros"``) or the edge
    (``"border"``).

    Example
    -------
    >>> x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    >>> sample_world(x, torch.eye(4)[None], torch.tensor([[[0.5, 0.5, 0.5]]])).tolist()
    [[[3.5]]]
    """
    grid = _sampling_grid(volume.shape[2:], world_to_voxel, points, volume.dtype)
    values = torch.nn.functional.grid_sample(volume, grid, mode="bilinear", padding_mode=padding_mode,
                                             align_corners=True)
    return values[:, :, :, 0, 0]


def with_world_gradient(volume: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """``[B, D, H, W, 4]`` (channels last): the single-channel ``volume`` and its world gradient (per mm).

    Central differences along the array axes (one-sided at the borders, as ``torch.gradient``),
    turned into world derivatives with the inverse of ``affine`` ``[B, 4, 4]``. Channels come last
    so that :func:`sample_world_fast` reads a voxel's four numbers in one place. It interpolates
    the gradient instead of differentiating the interpolation, as ITK's and ANTs' metrics use a
    gradient image.

    Example
    -------
    >>> ramp = torch.arange(4.0).reshape(1, 1, 4, 1, 1).expand(1, 1, 4, 3, 3)
    >>> with_world_gradient(ramp, torch.diag(torch.tensor([2.0, 1, 1, 1]))[None])[0, 1, 1, 1, 1:].tolist()
    [0.5, 0.0, 0.0]
    """
    values = volume[:, 0]
    inverse = torch.linalg.inv(affine.to(torch.float64).cpu())[:, :3, :3]  # metadata: read on the host
    kernels = _point_kernels() if volume.device.type == "cpu" and volume.dtype == torch.float32 else None
    if kernels is not None:  # one pass instead of three gradients and three weighted sums
        out = torch.empty(*values.shape, 4, dtype=volume.dtype)
        pick_kernel(kernels, "gradient_stack")(np.from_dlpack(values.detach().contiguous()),
                                               np.from_dlpack(inverse.to(volume.dtype).contiguous()),
                                               np.from_dlpack(out))
        return out
    derivatives = [torch.gradient(values, dim=axis)[0] if values.shape[axis] > 1 else torch.zeros_like(values)
                   for axis in (1, 2, 3)]
    stacked = torch.empty(*values.shape, 4, dtype=volume.dtype, device=volume.device)
    stacked[..., 0] = values
    for world_axis in range(3):  # d value / d world = (d value / d voxel) @ inv(A); zero terms skipped
        column = inverse[:, :, world_axis].to(volume.dtype)
        terms = [derivatives[i] * column[:, i, None, None, None].to(volume.device) for i in range(3)
                 if bool((column[:, i] != 0).any())]
        stacked[..., 1 + world_axis] = sum(terms[1:], terms[0]) if terms else 0.0
    return stacked


def _trilinear_channels_last(stacked: torch.Tensor, voxel: torch.Tensor) -> torch.Tensor:
    """Trilinear values ``[B, N, C]`` of ``stacked [B, D, H, W, C]`` at voxel coordinates ``[B, N, 3]`` (zeros outside).

    Eight gathers of whole voxels (C contiguous numbers each): much faster on the CPU than
    ``grid_sample`` for a few thousand points in a large volume.
    """
    batch, depth, height, width, channels = stacked.shape
    low = voxel.floor()
    fraction = (voxel - low).to(stacked.dtype)[:, :, None, :]  # [B, N, 1, 3]
    corners = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], device=voxel.device)
    index = low.long()[:, :, None, :] + corners  # [B, N, 8, 3]
    sizes = torch.tensor([depth, height, width], device=voxel.device)
    inside = ((index >= 0) & (index < sizes)).all(-1)
    index = torch.minimum(index.clamp(min=0), sizes - 1)
    row = (index[..., 0] * height + index[..., 1]) * width + index[..., 2]
    row = row + (torch.arange(batch, device=voxel.device) * (depth * height * width))[:, None, None]
    weight = torch.where(corners.bool(), fraction, 1.0 - fraction).prod(-1) * inside  # [B, N, 8]
    values = torch.index_select(stacked.reshape(-1, channels), 0, row.reshape(-1)).reshape(*row.shape, channels)
    return (values * weight[..., None]).sum(dim=2)


def _trilinear(stacked: torch.Tensor, voxel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_trilinear_channels_last` and :func:`_within` by the numba kernel on the CPU, else in torch."""
    kernels = _point_kernels() if stacked.device.type == "cpu" and stacked.dtype == torch.float32 else None
    if kernels is None:
        return _trilinear_channels_last(stacked, voxel), _within(voxel, stacked.shape[1:4])
    out = torch.empty(*voxel.shape[:2], stacked.shape[-1], dtype=stacked.dtype)
    inside = torch.empty(*voxel.shape[:2], dtype=torch.bool)
    pick_kernel(kernels, "trilinear_points")(np.from_dlpack(stacked.detach().contiguous()),
                                             np.from_dlpack(voxel.detach().to(torch.float64).contiguous()),
                                             np.from_dlpack(out), inside.numpy())
    return out, inside


def _within(voxel: torch.Tensor, shape) -> torch.Tensor:
    """``[B, N]``: whether each voxel coordinate ``[B, N, 3]`` lies in ``[0, size - 1]`` on every axis."""
    sizes = torch.tensor([float(n - 1) for n in shape], dtype=voxel.dtype, device=voxel.device)
    return ((voxel >= 0) & (voxel <= sizes)).all(dim=-1)


@functools.lru_cache(maxsize=1)
def _point_kernels() -> ModuleType | None:
    """:mod:`gpuprep.functional.point_kernels`, or None without numba."""
    try:
        return importlib.import_module(f"{__package__}.point_kernels")
    except ImportError:
        return None


class _SampleVoxelsWithGradient(torch.autograd.Function):
    """Values at voxel coordinates whose derivative is the interpolated gradient image; and which are inside."""

    @staticmethod
    def forward(ctx, voxel, stacked):
        sampled, inside = _trilinear(stacked, voxel)  # [B, N, 4], [B, N]
        ctx.save_for_backward(sampled[..., 1:])
        ctx.voxel_dtype = voxel.dtype
        ctx.mark_non_differentiable(inside)
        return sampled[..., 0][:, None], inside

    @staticmethod
    def backward(ctx, grad_values, grad_inside):
        (gradient,) = ctx.saved_tensors  # [B, N, 3]
        return (grad_values[:, 0, :, None] * gradient).to(ctx.voxel_dtype), None


class _SampleWorldWithGradient(torch.autograd.Function):
    """Values at world points whose derivative is the interpolated (world) gradient image."""

    @staticmethod
    def forward(ctx, points, stacked, world_to_voxel):
        sampled, _ = _trilinear(stacked, map_points(world_to_voxel, points))  # [B, N, 4]
        ctx.save_for_backward(sampled[..., 1:])
        return sampled[..., 0][:, None]

    @staticmethod
    def backward(ctx, grad_values):
        (gradient,) = ctx.saved_tensors  # [B, N, 3]
        return (grad_values[:, 0, :, None] * gradient).to(grad_values.dtype), None, None


def sample_voxels_fast(stacked: torch.Tensor, voxel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values ``[B, 1, N]`` at voxel coordinates ``[B, N, 3]`` of a :func:`with_world_gradient` stack; which are inside.

    The values are trilinear (zeros outside); their derivative with respect to ``voxel`` is the
    stack's gradient read there, so build the stack with the identity affine for voxel units.
    ``inside`` ``[B, N]`` (not differentiable) says which points lie within the grid, every
    coordinate in ``[0, size - 1]``: the registration metrics leave out the others.

    Example
    -------
    >>> ramp = torch.arange(4.0).reshape(1, 1, 4, 1, 1).expand(1, 1, 4, 3, 3)
    >>> stacked = with_world_gradient(ramp, torch.eye(4)[None])
    >>> voxel = torch.tensor([[[1.5, 1.0, 1.0], [3.5, 1.0, 1.0], [5.0, 1.0, 1.0]]], requires_grad=True)
    >>> values, inside = sample_voxels_fast(stacked, voxel)     # towards 0 within a voxel of the edge
    >>> values.tolist(), inside.tolist()
    ([[[1.5, 1.5, 0.0]]], [[True, False, False]])
    """
    return _SampleVoxelsWithGradient.apply(voxel, stacked)


def sample_world_fast(stacked: torch.Tensor, world_to_voxel: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Values ``[B, 1, N]`` at world ``points [B, N, 3]`` from a :func:`with_world_gradient` stack, differentiable.

    The values are :func:`sample_world`'s (trilinear, zeros outside); the derivative with respect
    to a point is the interpolated world gradient rather than the derivative of the trilinear
    interpolation.

    Example
    -------
    >>> ramp = torch.arange(4.0).reshape(1, 1, 4, 1, 1).expand(1, 1, 4, 3, 3)
    >>> stacked = with_world_gradient(ramp, torch.eye(4)[None])
    >>> p = torch.tensor([[[1.5, 1.0, 1.0]]], requires_grad=True)
    >>> sample_world_fast(stacked, torch.eye(4)[None], p).sum().backward()
    >>> p.grad.tolist()
    [[[1.0, 0.0, 0.0]]]
    """
    return _SampleWorldWithGradient.apply(points, stacked, world_to_voxel)
