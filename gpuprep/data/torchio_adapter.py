"""Converting samples to TorchIO ``Subject``s and back, keeping geometry, kind and history.

TorchIO's image tensor ``[C, W, H, D]`` is indexed by the file's voxel axes ``i, j, k``, as
gpuprep's ``[C, D, H, W]`` is, and its affine is RAS+ too: the tensor and the affine cross
unchanged. The kind becomes the image type (``ScalarImage`` for intensity images, ``LabelMap``
for label maps) and comes back from it. The history is kept in the subject under
``"gpuprep_history"``; the file name and original grid in each image under ``"gpuprep_meta"``
(TorchIO keeps both through its transforms).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import MissingDependencyError, TransformError
from ..sample import HISTORY_KEY, LABEL, get_history, get_kind, get_meta, image_keys, is_batch, make_meta, meta_key

#: The subject attribute that holds the history.
HISTORY_ATTRIBUTE = "gpuprep_history"
#: The image attribute that holds the file name and the original grid.
META_ATTRIBUTE = "gpuprep_meta"


def to_torchio(sample: Mapping, keys: str | Sequence[str] | None = None) -> Any:
    """Return a ``torchio.Subject`` holding the image keys of a (single) sample.

    Parameters
    ----------
    sample:
        A gpuprep sample ``[C, D, H, W]`` (TorchIO subjects are single; decollate a batch first).
    keys:
        The image keys to convert; None: every key with metadata. Label maps become
        ``tio.LabelMap``, intensity images ``tio.ScalarImage``. Tensors are moved to the CPU.

    Example
    -------
    >>> import torch, gpuprep as gp
    >>> s = gp.make_sample({"seg": torch.zeros(1, 2, 2, 2, dtype=torch.uint8)}, labels=["seg"])
    >>> type(gp.to_torchio(s)["seg"]).__name__
    'LabelMap'
    """
    tio = _torchio()
    keys = image_keys(sample) if keys is None else [keys] if isinstance(keys, str) else list(keys)
    images = {}
    for key in keys:
        meta = get_meta(sample, key)
        if is_batch(sample, key):
            raise TransformError(f"to_torchio: key {key!r} is a batch {tuple(sample[key].shape)}; TorchIO "
                                 "subjects hold one sample: convert the samples of gp.decollate(batch) one by one")
        image_type = tio.LabelMap if get_kind(sample, key) == LABEL else tio.ScalarImage
        tensor = sample[key].detach().cpu()
        extras = {
            "filename": meta.get("filename"),
            "original_affine": meta.get("original_affine", meta["affine"]).tolist(),
            "original_shape": meta["original_shape"].tolist() if "original_shape" in meta else list(tensor.shape[1:]),
        }
        images[key] = image_type(tensor=tensor.as_subclass(torch.Tensor), affine=meta["affine"].numpy().copy(),
                                 **{META_ATTRIBUTE: extras})
    return tio.Subject(**images, **{HISTORY_ATTRIBUTE: list(get_history(sample))})


def from_torchio(subject: Mapping) -> dict:
    """Return a gpuprep sample from a ``torchio.Subject``: one image key per TorchIO image.

    Kinds come from the image types (``LabelMap``: label map; any other: intensity image), the
    affine from each image, the history from the subject's ``"gpuprep_history"`` (empty if
    absent), the file name from the image's path or what :func:`to_torchio` stored.

    Example
    -------
    >>> import torch, torchio as tio, gpuprep as gp
    >>> subject = tio.Subject(seg=tio.LabelMap(tensor=torch.zeros(1, 2, 2, 2, dtype=torch.uint8)))
    >>> gp.get_kind(gp.from_torchio(subject), "seg")
    'label'
    """
    tio = _torchio()
    if not isinstance(subject, tio.Subject):
        raise TransformError(f"from_torchio expects a torchio.Subject, got {type(subject).__name__}")
    sample: dict = {}
    for key, image in subject.get_images_dict(intensity_only=False).items():
        tensor = image.data  # loads the file if the image was given by path
        extras = image.get(META_ATTRIBUTE) or {}
        path = image.path if isinstance(image.path, (str, os.PathLike)) else None
        sample[key] = tensor
        sample[meta_key(key)] = make_meta(
            image.affine,
            filename=extras.get("filename") if path is None else str(path),
            spatial_shape=tensor.shape[1:],
            original_affine=extras.get("original_affine"),
            original_shape=extras.get("original_shape"),
            kind=LABEL if image.type == tio.LABEL else "image",
        )
    sample[HISTORY_KEY] = list(subject.get(HISTORY_ATTRIBUTE) or [])
    return sample


def _torchio():
    try:
        import torchio
    except ImportError as error:
        raise MissingDependencyError(
            f"gp.to_torchio/gp.from_torchio need TorchIO (pip install torchio): {error}"
        ) from None
    return torchio
