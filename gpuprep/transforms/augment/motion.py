"""Random MRI motion artefact (TorchIO's RandomMotion), computed in k-space on the input's device.

Per sample a few rigid movements are drawn (recorded in the history, so a run replays exactly);
the moved copies of the image are resampled on the device with
:func:`gpuprep.functional.resample.resample`, and the k-space of the result is assembled from
their spectra, segment by segment along the last spatial axis. Intensity images only
(label maps, by kind, pass through untouched); dtype (integer images become float32) and device
are kept. Nothing is read back
from the volumes to the host (only the ``[B, 4, 4]`` affines, which are CPU metadata).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...functional.affine import grid_center, rotation_matrix, world_transform
from ...functional.resample import resample
from ...random.ranges import symmetric_range
from ...records import applied_samples
from ...validation import check_int
from ..base import float_intensity_keys
from ..random_base import RandomOptions
from .intensity import _RandomIntensity

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack

__all__ = ["RandMotion"]

_SPATIAL = (-3, -2, -1)
_PERTURBATION = 0.3  # TorchIO's RandomMotion.get_params default
# SimpleITK works in LPS, the affines are RAS: an LPS map M is F @ M @ F in RAS.
_LPS = np.diag([-1.0, -1.0, 1.0])


def _itk_euler_matrix(degrees: Sequence[float]) -> np.ndarray:
    """Rotation of ``sitk.Euler3DTransform.SetRotation`` (ZXY order: ``Rz @ Rx @ Ry``)."""
    ax, ay, az = (float(d) for d in degrees)
    return rotation_matrix([0, 0, az]) @ rotation_matrix([ax, 0, 0]) @ rotation_matrix([0, ay, 0])


def motion_voxel_maps(affine: np.ndarray, shape: Sequence[int], degrees, translation) -> np.ndarray:
    """``[n + 1, 4, 4]`` output-voxel to input-voxel maps of the copies (the first is the identity).

    Each movement is TorchIO 1.2's: an ITK Euler rotation and a translation (mm) in LPS, used as
    SimpleITK's resampling transform (output point -> input point), but about the centre of the
    grid: TorchIO means to rotate about the centre too, yet drops it when it rebuilds the
    transform, so it rotates about the world origin, which for a scanner affine can lie far
    outside the head. The two agree when the world origin is the grid centre.
    """
    affine = np.asarray(affine, dtype=np.float64)
    center = grid_center(affine, shape)
    inverse = np.linalg.inv(affine)
    maps = [np.eye(4)]
    for angles, shift in zip(degrees, translation, strict=True):
        linear = _LPS @ _itk_euler_matrix(angles) @ _LPS
        motion = world_transform(linear, center, _LPS @ np.asarray(shift, dtype=np.float64))
        maps.append(inverse @ motion @ affine)
    return np.stack(maps)


def _segment_bounds(times: Sequence[float], size: int) -> list[int]:
    """TorchIO's ``(size * times).astype(int)`` (float32 times) followed by ``size``."""
    return [int(v) for v in (size * np.asarray(times, dtype=np.float32)).astype(int)] + [size]


def _spectrum_order(times: Sequence[float]) -> list[int]:
    """Copy index per k-space segment: TorchIO's ``sort_spectra`` puts the unmoved copy at the centre."""
    order = list(range(len(times) + 1))
    later = [i for i, t in enumerate(times) if t > 0.5]
    index = min(later) if later else len(order) - 1
    order[0], order[index] = order[index], order[0]
    return order


def motion_artifact(x: torch.Tensor, voxel_maps: np.ndarray, times: Sequence[float]) -> torch.Tensor:
    """Motion artefact of one sample ``x`` ``[C, D, H, W]`` given its copies' maps and ``times``.

    Out-of-field voxels of the moved copies take each channel's minimum (SimpleITK's default
    pixel value in TorchIO); the output is the real part of the inverse FFT, as in TorchIO.

    TorchIO transforms the copies in 3D, cuts the centred k-space along W and transforms back.
    The cut depends on the W frequency only, so the transforms along D and H cancel: 1D FFTs
    along W give the same image (to rounding) at a fraction of the cost.
    """
    dtype = x.dtype
    x = x if dtype in (torch.float32, torch.float64) else x.float()  # FFTs and grid_sample need these
    count = len(voxel_maps)
    low = x.amin(dim=_SPATIAL, keepdim=True)
    shifted = (x - low).unsqueeze(0).expand(count - 1, *x.shape)
    moved = resample(shifted, voxel_maps[1:], x.shape[1:], mode="linear") + low
    copies = torch.cat([x.unsqueeze(0), moved.to(x.dtype)])
    spectra = torch.fft.fftshift(torch.fft.fft(copies, dim=-1), dim=-1)
    bounds = _segment_bounds(times, x.shape[-1])
    pieces, start = [], 0
    for copy, stop in zip(_spectrum_order(times), bounds, strict=True):
        pieces.append(spectra[copy, ..., start:stop])
        start = max(start, stop)
    spectrum = torch.cat(pieces, dim=-1)
    image = torch.fft.ifft(torch.fft.ifftshift(spectrum, dim=-1), dim=-1)
    return image.real.to(dtype)


class RandMotion(_RandomIntensity):
    """Add an MRI motion artefact: k-space filled from rigidly moved copies (TorchIO's RandomMotion).

    Per sample ``num_transforms`` rotations (degrees about the world x, y, z axes) and
    translations (mm, along the world axes; the rotation is about the grid centre, where TorchIO
    rotates about the world origin) are drawn, and as many sorted ``times`` in ``(0, 1)``:
    ``k / (n + 1)`` perturbed by up to ``0.3 / (n + 1)``. The unmoved image and the moved copies (resampled
    linearly on the device, out-of-field voxels set to the channel minimum) are Fourier
    transformed (along W only, which gives the same image as TorchIO's 3D transforms; see
    :func:`motion_artifact`); the centred k-space is cut along the last spatial axis (W) at ``times * W`` and
    each segment is taken from one copy (the unmoved one covering the centre, as TorchIO); the
    image is the real part of the inverse FFT. Zero movement leaves the image unchanged.

    Parameters
    ----------
    keys:
        Image keys; label maps (by kind, see gp.get_kind) are left alone. Each key's ``{key}_meta["affine"]`` gives
        the world frame of the movements.
    degrees:
        Rotation range: a number ``d`` means ``(-d, d)``, or a pair ``(low, high)``.
    translation:
        Translation range in mm: a number ``t`` means ``(-t, t)``, or a pair.
    num_transforms:
        Number of movements, an integer ``>= 1``.
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Reference
    ---------
    ``torchio.RandomMotion(degrees, translation, num_transforms)``; the output matches TorchIO's
    ``Motion(degrees, translation, times, image_interpolation="linear")`` with the recorded
    parameters up to interpolation differences (SimpleITK's resampler versus gpuprep's).
    R. Shaw et al., "MRI k-space motion artefact augmentation", MIDL 2019.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 8, 8, 8)})
    >>> out = RandMotion("image", num_transforms=3, seed=0)(s)
    >>> params = gp.get_history(out)[-1]["params"]
    >>> len(params["degrees"]), len(params["times"]), out["image"].shape
    (3, 3, torch.Size([1, 8, 8, 8]))
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        degrees: float | Sequence[float] = 10,
        translation: float | Sequence[float] = 10,
        num_transforms: int = 2,
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        self.degrees = symmetric_range(degrees, "degrees", "RandMotion", axes=1)[0]
        self.translation = symmetric_range(translation, "translation", "RandMotion", axes=1)[0]
        self.num_transforms = check_int("RandMotion", "num_transforms", num_transforms, minimum=1)

    def draw(self, rng: random.Random) -> dict:
        n = self.num_transforms
        degrees = [[rng.uniform(*self.degrees) for _ in range(3)] for _ in range(n)]
        translation = [[rng.uniform(*self.translation) for _ in range(3)] for _ in range(n)]
        step = 1.0 / (n + 1)
        noise = [rng.uniform(-step * _PERTURBATION, step * _PERTURBATION) for _ in range(n)]
        times = [float(np.float32((k + 1) * step + e)) for k, e in enumerate(noise)]
        return {"degrees": degrees, "translation": translation, "times": times}

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        chosen = applied_samples(params)
        if not chosen:
            return batch
        for key in float_intensity_keys(batch, keys):
            x = batch[key]
            meta = batch.get(f"{key}_meta") or {}
            affines = meta.get("affine")
            out = x.clone()
            for index in chosen:
                affine = np.eye(4) if affines is None else np.asarray(affines[index], dtype=np.float64)
                p = params[index]
                maps = motion_voxel_maps(affine, x.shape[-3:], p["degrees"], p["translation"])
                out[index] = motion_artifact(x[index], maps, p["times"])
            batch[key] = out
        return batch
