"""Fusion of voxel-wise intensity steps: consecutive random intensity transforms in one pass.

:class:`~gpuprep.Compose` groups consecutive transforms that set ``voxelwise = True``
(:class:`~gpuprep.RandBiasField`, :class:`~gpuprep.RandGamma`, :class:`~gpuprep.RandContrast`,
:class:`~gpuprep.RandBrightness`, :class:`~gpuprep.RandNoise`) into one run, and
:func:`apply_voxel_fused` applies the run: every transform draws its parameters as it would
alone, each key's steps become one chain of
:class:`~gpuprep.functional.intensity_chain.VoxelStep` applied by
:func:`~gpuprep.functional.intensity_chain.apply_voxel_chain` (one pass over the voxels with
numba on the CPU), and every transform appends its own record, marked ``"fused"`` like a fused
spatial run so that :func:`gpuprep.replay` applies the steps together again.

A contrast step scales deviations from its input's mean, which needs the whole volume: it can
only start a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import TransformError
from ..foreign import adopt_foreign, sync_monai_meta_dicts
from ..functional.intensity_chain import apply_voxel_chain
from ..records import applied_samples
from ..sample import collate, decollate
from .base import float_intensity_keys

__all__ = ["apply_voxel_fused", "joins_voxel_run", "voxelwise"]


def voxelwise(transform: Any) -> bool:
    """Whether ``transform`` changes each voxel on its own and describes itself as a ``VoxelStep``."""
    return bool(getattr(transform, "voxelwise", False))


def joins_voxel_run(transform: Any, run: Sequence[Any]) -> bool:
    """Whether ``transform`` can be applied in one pass with the voxel-wise ``run`` before it.

    Example
    -------
    >>> import gpuprep as gp
    >>> joins_voxel_run(gp.RandGamma("image"), [gp.RandBiasField("image")])
    True
    >>> joins_voxel_run(gp.RandContrast("image"), [gp.RandBiasField("image")])
    False
    """
    return (voxelwise(transform) and all(voxelwise(t) for t in run)
            and not getattr(transform, "needs_input_statistics", False))


def apply_voxel_fused(transforms: Sequence[Any], data: Mapping, recorded: Sequence[tuple] | None = None) -> dict:
    """Apply consecutive voxel-wise transforms to a sample or a batch in one pass per key.

    Parameters
    ----------
    transforms:
        The run, in order (each ``voxelwise``).
    data:
        A sample or a batch.
    recorded:
        For replay: per transform, ``(keys, params, extras)`` from its records; nothing is drawn.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"image": torch.rand(1, 4, 4, 4)})
    >>> out = apply_voxel_fused([gp.RandGamma("image", seed=0), gp.RandNoise("image", seed=1)], s)
    >>> [r["fused"] for r in gp.get_history(out)]
    [{'index': 0, 'count': 2}, {'index': 1, 'count': 2}]
    """
    if recorded is not None and len(recorded) != len(transforms):
        raise TransformError(f"apply_voxel_fused: got {len(recorded)} recorded steps for {len(transforms)} transforms")
    keys_present = ([t._present_keys(data) for t in transforms] if recorded is None
                    else [list(keys) for keys, _, _ in recorded])
    all_keys = list(dict.fromkeys(k for keys in keys_present for k in keys))
    if not all_keys:
        return dict(data)
    data = adopt_foreign(data, all_keys, "apply_voxel_fused")
    single = transforms[0].is_single(data, all_keys)
    batch = collate([data]) if single else dict(data)
    planned = []
    for position, (transform, keys) in enumerate(zip(transforms, keys_present)):
        if not keys:
            continue
        if recorded is None:
            params = transform.make_params(batch, keys)
            extras = transform.record_extras(len(params))
        else:
            _, params, extras = recorded[position]
        planned.append((transform, keys, list(params), list(extras)))
    for key in all_keys:
        steps = [t.voxel_step(key, params) for t, keys, params, _ in planned
                 if key in keys and applied_samples(params)]
        if steps and float_intensity_keys(batch, [key]):
            batch[key] = apply_voxel_chain(batch[key], steps)
    for index, (transform, keys, params, extras) in enumerate(planned):
        if recorded is None and len(planned) > 1:
            extras = [{**extra, "fused": {"index": index, "count": len(planned)}} for extra in extras]
        batch = transform._record(batch, keys, params, extras)
    return sync_monai_meta_dicts(decollate(batch)[0] if single else batch)
