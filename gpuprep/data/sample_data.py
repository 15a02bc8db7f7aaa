"""The bundled sample brain: a 2 mm MNI152 T1 with tissue labels and a brain mask.

The files live in ``gpuprep/data/sample/`` (about 270 kB in all) and were derived from the
ICBM 2009a nonlinear symmetric template shipped with nilearn by ``scripts/make_sample_data.py``;
their licence notice is ``gpuprep/data/sample/LICENSE-MNI152.txt``. Labels follow
:data:`~gpuprep.data.labels.TISSUE_LABELS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..io.reader import read_image
from ..sample import HISTORY_KEY, IMAGE, LABEL

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
_FILES = {
    "image": ("sample_t1w.nii.gz", torch.float32),
    "label": ("sample_tissue.nii.gz", torch.uint8),
    "brain_mask": ("sample_brainmask.nii.gz", torch.uint8),
}


def tissue_1mm_path() -> Path:
    """Path of the 1 mm tissue label map (0 background, 1 CSF, 2 GM, 3 WM) of the same template.

    The anatomy the shipped brain-tissue U-Net is trained on (``gpuprep/models/train.py``).

    Example
    -------
    >>> tissue_1mm_path().name
    'sample_tissue_1mm.nii.gz'
    """
    return SAMPLE_DIR / "sample_tissue_1mm.nii.gz"


def sample_brain_paths() -> dict[str, Path]:
    """Return the paths of the sample brain's files, by sample key.

    Returns
    -------
    dict
        ``"image"`` (T1, uint8 on disk), ``"label"`` (0 background, 1 CSF, 2 GM, 3 WM) and
        ``"brain_mask"`` (0/1) -> absolute :class:`pathlib.Path` of a ``.nii.gz`` file.

    Example
    -------
    >>> paths = sample_brain_paths()
    >>> paths["image"].name
    'sample_t1w.nii.gz'
    >>> all(p.is_file() for p in paths.values())
    True
    """
    return {key: SAMPLE_DIR / name for key, (name, _) in _FILES.items()}


def sample_brain(device: Any = None) -> dict:
    """Load the sample brain (MNI152 2009a, 2 mm, 99 x 117 x 95) as a sample dict.

    The files are read by :func:`gpuprep.io.reader.read_image`, like any user file, so the
    metadata is what reading them yourself gives.

    Parameters
    ----------
    device:
        Where the tensors go (``"cuda"``, a ``torch.device``...); they stay on the CPU if None.
        Metadata always stays on the CPU.

    Returns
    -------
    dict
        ``"image"``: float32 ``[1, 99, 117, 95]``, the T1 intensities as stored (0 to 255);
        ``"label"``: uint8 tissue labels (0 background, 1 CSF, 2 GM, 3 WM);
        ``"brain_mask"``: uint8 0/1; each with its ``*_meta`` (the file's affine, RAS+ mm, and
        filename, from :func:`~gpuprep.sample.make_meta`; kind ``"image"`` for the T1, ``"label"``
        for the others), and an empty ``"history"``.

    Example
    -------
    >>> s = sample_brain()
    >>> tuple(s["image"].shape), s["label"].dtype
    ((1, 99, 117, 95), torch.uint8)
    >>> s["image_meta"]["affine"][0].tolist()
    [2.0, 0.0, 0.0, -98.0]
    """
    sample: dict = {}
    for key, path in sample_brain_paths().items():
        tensor, meta = read_image(path, dtype=_FILES[key][1])
        if device is not None:
            tensor = tensor.to(device)
        sample[key] = tensor
        # make_meta(affine, filename, shape) plus the file's xform codes, and the kind of the key
        sample[f"{key}_meta"] = {**meta, "kind": IMAGE if key == "image" else LABEL}
    sample[HISTORY_KEY] = []
    return sample
