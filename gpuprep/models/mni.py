"""The MNI152 2009a templates nilearn ships: T1, tissue fractions and tissue labels.

nilearn (a development dependency) ships the 1 mm and 2 mm T1, grey- and white-matter
probability maps and brain mask of the ICBM 2009a nonlinear symmetric template; nothing is
downloaded. Inside the brain mask the tissue fractions are ``(CSF, GM, WM)`` with
``CSF = 1 - GM - WM`` (clipped, and the three scaled to sum to 1 where GM + WM exceeds 1); the
tissue labels are their argmax (1 CSF, 2 GM, 3 WM, 0 outside the mask), the same labels as the
bundled sample brain (``scripts/make_sample_data.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import MissingDependencyError

__all__ = ["mni_t1", "mni_tissue_fractions"]


def _nilearn_datasets():
    try:
        from nilearn import datasets
    except ImportError:
        raise MissingDependencyError("the MNI152 templates come from nilearn: pip install nilearn") from None
    return datasets


def mni_t1(resolution: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    """The MNI152 2009a T1 ``[1, D, H, W]`` float32 and its affine."""
    t1 = _nilearn_datasets().load_mni152_template(resolution=resolution)
    return torch.from_numpy(np.ascontiguousarray(t1.get_fdata(dtype=np.float32)))[None], t1.affine


def mni_tissue_fractions(resolution: int = 1) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Tissue fractions ``[4, D, H, W]`` float32, tissue labels ``[1, D, H, W]`` uint8 and the affine.

    The fractions are background, CSF, GM and WM and sum to 1 in every voxel (background 1
    outside the brain mask, 0 inside); the labels are the argmax of the unscaled fractions in
    float64, ties going to the lower label (a float32 argmax of the fractions differs in the few
    hundred voxels where rounding makes or breaks a tie).

    Example
    -------
    >>> fractions, labels, affine = mni_tissue_fractions(2)
    >>> tuple(fractions.shape), tuple(labels.shape)
    ((4, 99, 117, 95), (1, 99, 117, 95))
    """
    datasets = _nilearn_datasets()
    gm_img = datasets.load_mni152_gm_template(resolution=resolution)
    gm = np.clip(gm_img.get_fdata(), 0.0, 1.0)
    wm = np.clip(datasets.load_mni152_wm_template(resolution=resolution).get_fdata(), 0.0, 1.0)
    inside = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution).dataobj) > 0
    tissue = np.stack([np.clip(1.0 - gm - wm, 0.0, 1.0), gm, wm])
    labels = np.where(inside, np.argmax(tissue, axis=0) + 1, 0).astype(np.uint8)  # in float64, before scaling
    tissue /= np.maximum(tissue.sum(axis=0), 1.0)  # GM + WM above 1: scale the pair down to 1
    fractions = np.concatenate([(~inside)[None].astype(np.float64), tissue * inside], axis=0)
    return (torch.from_numpy(fractions.astype(np.float32)), torch.from_numpy(np.ascontiguousarray(labels))[None],
            gm_img.affine)
