"""Random spatial augmentation: flips, quarter turns and affine transforms, fused and invertible.

These move the *content* on a fixed grid (the affine is kept), which is what augmentation means:
after a world-preserving step such as :class:`~gpuprep.Resample` the anatomy is still moved.
Each is a :class:`~gpuprep.transforms.spatial.base.SpatialTransform`, so consecutive spatial
steps, random or not, are resampled once by :class:`~gpuprep.Compose`, and ``gp.invert`` undoes
them from the recorded maps.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ConfigError
from ...functional.affine import grid_center, rotation_matrix, shear_matrix, world_transform
from ...functional.grid import flip_map, rot90_map
from ...random.ranges import symmetric_range
from ...records import is_skipped, make_step
from ...validation import spatial_axes, validate_mode
from ..random_base import RandomOptions, RandomOptionsBesidesP, RandomTransform
from ..spatial.base import SpatialTransform
from ..spatial.padding import validate_padding_mode, validate_padding_value

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack


class _RandomSpatial(SpatialTransform, RandomTransform, abstract=True):
    """Plans one step per key from each sample's drawn parameters (the same for all keys)."""

    def plan(self, grids, batch, keys):
        draws = self.draw_params(batch, keys)
        reference_shape, reference_affines = grids[keys[0]]
        params = []
        for index, drawn in enumerate(draws):
            entry: dict[str, Any] = {"draw": drawn}
            for key in keys:
                shape, affines = grids[key]
                affine = affines[index]
                if not is_skipped(drawn):
                    context = (reference_shape, reference_affines[index])
                    out_shape, voxel_map = self.random_step(drawn, shape, affine, context)
                else:
                    out_shape, voxel_map = tuple(shape), np.eye(4)
                # The grid stays, the content moves: the output keeps the input's affine.
                entry[key] = make_step(shape, affine, out_shape, voxel_map, out_affine=affine)
            params.append(entry)
        return params

    def random_step(self, drawn: dict, shape, affine, context) -> tuple[tuple[int, ...], np.ndarray]:
        raise NotImplementedError


class RandFlip(_RandomSpatial):
    """Mirror the content along spatial axes, each with probability ``p`` (as TorchIO's RandomFlip).

    Parameters
    ----------
    keys:
        Image keys (labels move with the images, exactly).
    axes:
        Spatial axes (0, 1, 2 = D, H, W) that may be flipped, each independently.
    p:
        Probability of flipping each axis.
    **options:
        ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.arange(4.).reshape(1, 4, 1, 1)})
    >>> gp.RandFlip("image", axes=0, p=1.0, seed=0)(s)["image"].flatten().tolist()
    [3.0, 2.0, 1.0, 0.0]
    """

    padding_mode = None  # voxels only change places: nothing is read from outside the input

    def __init__(
        self,
        keys: str | Sequence[str],
        axes: int | Sequence[int] = (0, 1, 2),
        p: float = 0.5,
        **options: Unpack[RandomOptionsBesidesP],
    ):
        super().__init__(keys, p=p, **options)
        axes_tuple = spatial_axes(axes, "RandFlip")
        self.axes = tuple(sorted(set(axes_tuple)))

    def draw_params(self, batch, keys):
        params = []
        for rng in self._streams(batch, keys):
            flips = [axis for axis in self.axes if rng.random() < self.p]
            params.append({"apply": bool(flips), "axes": flips})
        return params

    def random_step(self, drawn, shape, affine, context):
        return tuple(shape), flip_map(shape, drawn["axes"])


class RandRotate90(_RandomSpatial):
    """Rotate the content by 1 to ``max_k`` quarter turns in a plane, with probability ``p``.

    A non-square plane turned by an odd number of quarters changes shape; samples of one batch
    must then agree (use ``same_on_batch=True``) or an error says so.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> gp.RandRotate90("image", p=1.0, seed=1)(gp.make_sample({"image": torch.rand(1, 4, 4, 2)}))["image"].shape
    torch.Size([1, 4, 4, 2])
    """

    padding_mode = None  # voxels only change places: nothing is read from outside the input

    def __init__(
        self,
        keys: str | Sequence[str],
        axes: Sequence[int] = (0, 1),
        max_k: int = 3,
        p: float = 0.5,
        **options: Unpack[RandomOptionsBesidesP],
    ):
        super().__init__(keys, p=p, **options)
        axes = tuple(axes)
        if len(axes) != 2 or axes[0] == axes[1] or not all(a in (0, 1, 2) for a in axes):
            raise ConfigError(f"RandRotate90: axes must be two different spatial axes among 0, 1, 2, got {axes!r}")
        if not isinstance(max_k, int) or isinstance(max_k, bool) or not 1 <= max_k <= 3:
            raise ConfigError(f"RandRotate90: max_k must be 1, 2 or 3, got {max_k!r}")
        self.axes = axes
        self.max_k = max_k

    def draw(self, rng: random.Random) -> dict:
        return {"k": rng.randint(1, self.max_k)}

    def random_step(self, drawn, shape, affine, context):
        voxel_map, out_shape = np.eye(4), tuple(shape)
        for _ in range(drawn["k"]):
            turn, out_shape = rot90_map(out_shape, self.axes)
            voxel_map = voxel_map @ turn
        return out_shape, voxel_map


class RandAffine(_RandomSpatial):
    """Random rotation, scaling, shear and translation in world space about the image centre.

    Parameters
    ----------
    keys:
        Image keys; label maps (by kind) are resampled by nearest neighbour and padded with 0.
    rotate:
        Degrees about the world x, y, z axes: ``d`` draws from ``(-d, d)``; a pair or one per axis.
    scale:
        ``s`` draws factors from ``(1 - s, 1 + s)``; a pair or one per axis.
    shear:
        Shear factors (xy, xz, yz), ranges as for ``rotate``.
    translate:
        Millimetres along x, y, z, ranges as for ``rotate``.
    isotropic:
        Draw one scale factor for all axes.
    mode, padding_mode:
        Interpolation of intensity images (``"linear"``, ``"nearest"``, ``"cubic"``) and
        what lies outside (``"zeros"``: a constant, or ``"border"``).
    padding_value:
        The constant intensity images get outside: a number (default 0) or ``"minimum"`` (each
        sample's and channel's minimum; for a CT in HU use -1000 or ``"minimum"``).
    **options:
        ``p``, ``same_on_batch``, ``seed``, ``allow_missing_keys``: see
        :class:`~gpuprep.transforms.random_base.RandomTransform`.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> t = gp.RandAffine(["image"], rotate=15, scale=0.1, seed=0)
    >>> t(gp.make_sample({"image": torch.rand(1, 8, 8, 8)}))["image"].shape
    torch.Size([1, 8, 8, 8])
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        rotate: float | Sequence = 0.0,
        scale: float | Sequence = 0.0,
        shear: float | Sequence = 0.0,
        translate: float | Sequence = 0.0,
        isotropic: bool = False,
        mode: str = "linear",
        padding_mode: str = "zeros",
        *,
        padding_value: float | str = 0.0,
        **options: Unpack[RandomOptions],
    ):
        super().__init__(keys, **options)
        self.rotate = symmetric_range(rotate, "rotate", "RandAffine")
        self.scale = symmetric_range(scale, "scale", "RandAffine", center=1.0)
        if any(low <= 0 for low, _ in self.scale):
            raise ConfigError(f"RandAffine: scale factors must stay above 0, got scale={scale!r}")
        self.shear = symmetric_range(shear, "shear", "RandAffine")
        self.translate = symmetric_range(translate, "translate", "RandAffine")
        self.isotropic = bool(isotropic)
        self.mode = validate_mode(mode, "RandAffine")
        self.padding_mode = validate_padding_mode(padding_mode, "RandAffine")
        self.padding_value = validate_padding_value(padding_value, "RandAffine")

    def draw(self, rng: random.Random) -> dict:
        scale = [rng.uniform(*r) for r in self.scale]
        if self.isotropic:
            scale = [scale[0]] * 3
        return {
            "rotate": [rng.uniform(*r) for r in self.rotate],
            "scale": scale,
            "shear": [rng.uniform(*r) for r in self.shear],
            "translate": [rng.uniform(*r) for r in self.translate],
        }

    def random_step(self, drawn, shape, affine, context):
        reference_shape, reference_affine = context
        linear = rotation_matrix(drawn["rotate"]) @ np.diag(drawn["scale"]) @ shear_matrix(drawn["shear"])
        forward = world_transform(linear, grid_center(reference_affine, reference_shape), drawn["translate"])
        # Pull: output voxel -> world -> where that point came from -> input voxel.
        voxel_map = np.linalg.solve(affine, np.linalg.solve(forward, affine))
        return tuple(shape), voxel_map
