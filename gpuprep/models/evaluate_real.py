"""Measure the shipped models on real whole heads that were never used in training.

The brain mask is compared with the voxel-wise majority of three peer skull strippers
(deepbet, HD-BET fast, ROBEX; ``scripts/peer_brain_masks.py`` writes ``NAME_majority.nii.gz``
and ``peers.json``), and with each of them; the tissue model with a FreeSurfer ``aseg``
(:data:`ASEG_TISSUES`) and with Atropos masks if given. The heads and masks are not part of
the package: FreeSurfer's licence does not allow shipping fsaverage (see the model cards for
where they come from and the commands that made them).

Run::

    python -m gpuprep.models.evaluate --task brain-mask --real-heads HEADS_DIR --peer-masks PEERS_DIR
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.reader import read_image
from ..sample import make_sample
from .inference import SegmentBrain
from .skull_strip import SkullStrip

__all__ = [
    "ASEG_TISSUES", "aseg_tissues", "dice", "evaluate_mask_on_heads", "evaluate_tissue_on_head", "mask_agreement",
]

TISSUES = {1: "CSF", 2: "GM", 3: "WM"}

#: FreeSurfer aseg labels grouped into the three tissues of the tissue model (1 CSF, 2 GM, 3 WM).
#: CSF: lateral, inferior lateral, third, fourth ventricles, CSF, fifth ventricle; GM: cerebral
#: and cerebellar cortex and the subcortical grey nuclei (thalamus, caudate, putamen, pallidum,
#: hippocampus, amygdala, accumbens); WM: cerebral and cerebellar white matter, brainstem,
#: ventral diencephalon and corpus callosum. Sulcal CSF has no aseg label (it is 0 inside the
#: brain), so CSF is reported but not a target.
ASEG_TISSUES = {
    1: (4, 5, 14, 15, 24, 43, 44, 72),
    2: (3, 8, 10, 11, 12, 13, 17, 18, 26, 42, 47, 49, 50, 51, 52, 53, 54, 58),
    3: (2, 7, 16, 28, 41, 46, 60, 251, 252, 253, 254, 255),
}


def aseg_tissues(aseg: torch.Tensor) -> torch.Tensor:
    """Map a FreeSurfer aseg label map to 0 / 1 CSF / 2 GM / 3 WM (:data:`ASEG_TISSUES`).

    Example
    -------
    >>> aseg_tissues(torch.tensor([0, 4, 3, 2, 10, 77])).tolist()
    [0, 1, 2, 3, 2, 0]
    """
    out = torch.zeros(aseg.shape, dtype=torch.uint8)
    for tissue, labels in ASEG_TISSUES.items():
        out[torch.isin(aseg.long(), torch.tensor(labels))] = tissue
    return out


def dice(prediction: torch.Tensor, truth: torch.Tensor, value: int) -> float:
    """Dice overlap of one label value between two label maps.

    Parameters
    ----------
    prediction, truth:
        Label maps of the same shape.
    value:
        The label whose overlap is measured (0.0 when neither map holds it).

    Example
    -------
    >>> dice(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 1)
    0.6666666865348816
    """
    a, b = prediction == value, truth == value
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def mask_agreement(mask: torch.Tensor, reference: torch.Tensor, voxel_ml: float) -> dict:
    """Dice, volumes (mL) and the extra volume (mL and %) of a mask against a reference mask."""
    a, b = mask.bool(), reference.bool()
    both = int((a & b).sum())
    total = int(a.sum() + b.sum())
    return {"dice": round(2 * both / max(total, 1), 4), "volume_ml": round(float(a.sum()) * voxel_ml, 1),
            "reference_ml": round(float(b.sum()) * voxel_ml, 1),
            "extra_ml": round(float((a & ~b).sum()) * voxel_ml, 1),
            "missed_ml": round(float((b & ~a).sum()) * voxel_ml, 1),
            "extra_volume_percent": round(100 * (float(a.sum()) / max(float(b.sum()), 1) - 1), 2)}


def evaluate_mask_on_heads(model: torch.nn.Module, heads: Path, peer_masks: Path,
                           names: list[str] | None = None, qc_dir: Path | None = None) -> dict:
    """Brain-mask agreement on each ``heads/NAME.nii.gz`` with ``peer_masks/NAME_majority.nii.gz``.

    Also the Dice with each peer's own mask and the peers' pairwise Dice (from ``peers.json``),
    and the seconds ``SkullStrip`` took. With ``qc_dir``, the worst head's montage (the mask
    over the scan) is written there as ``worst_brain_mask.png``.
    """
    peers = json.loads((peer_masks / "peers.json").read_text()) if (peer_masks / "peers.json").exists() else {}
    names = names or sorted(p.name.removesuffix("_majority.nii.gz") for p in peer_masks.glob("*_majority.nii.gz")
                            if (heads / (p.name.removesuffix("_majority.nii.gz") + ".nii.gz")).exists())
    strip = SkullStrip("image", mask_key="brain_mask", model=model, apply=False)
    results, worst = {}, None
    for name in names:
        image, meta = read_image(heads / f"{name}.nii.gz", dtype="float32")
        reference, _ = read_image(peer_masks / f"{name}_majority.nii.gz")
        voxel_ml = float(np.prod(np.linalg.norm(meta["affine"][:3, :3].numpy(), axis=0))) / 1000
        start = time.perf_counter()
        out = strip(make_sample({"image": image}, affine=meta["affine"]))
        seconds = time.perf_counter() - start
        mask = out["brain_mask"]
        entry: dict[str, Any] = {"majority": mask_agreement(mask, reference, voxel_ml), "seconds": round(seconds, 1)}
        for tool in ("deepbet", "hdbet", "robex"):
            path = peer_masks / f"{name}_{tool}.nii.gz"
            if path.exists():
                entry[tool] = mask_agreement(mask, read_image(path)[0], voxel_ml)["dice"]
        if name in peers:
            entry["peers_pairwise_dice"] = peers[name].get("pairwise_dice")
            entry["peer_dice_vs_majority"] = {tool: value.get("dice_vs_majority")
                                              for tool, value in peers[name].get("tools", {}).items()}
        results[name] = entry
        if worst is None or entry["majority"]["dice"] < worst[0]:
            worst = (entry["majority"]["dice"], name, image, mask, reference, meta["affine"])
    if qc_dir is not None and worst is not None:
        from ..io.overlay import save_overlay

        qc_dir.mkdir(parents=True, exist_ok=True)
        _, name, image, mask, reference, affine = worst
        both = mask.to(torch.uint8) + 2 * reference.to(torch.uint8)  # 1 gpuprep only, 2 peers only, 3 both
        save_overlay(qc_dir / "worst_brain_mask.png", image, both, affine,
                     names={"1": "gpuprep-only", "2": "peers-only", "3": "both"}, title=f"{name}: brain mask vs peers")
    dices = [r["majority"]["dice"] for r in results.values()]
    extra = [r["majority"]["extra_volume_percent"] for r in results.values()]
    return {"heads": results, "min_dice": min(dices) if dices else None,
            "max_extra_volume_percent": max(extra) if extra else None}


def _dice(a: torch.Tensor, b: torch.Tensor, value: int) -> float:
    return round(dice(a, b, value), 4)


def evaluate_tissue_on_head(model: torch.nn.Module, head: Path, mask: Path, aseg: Path | None = None,
                            atropos: Path | None = None) -> dict:
    """Tissue Dice of the model on a real head, skull-stripped with ``mask`` (for example the peers' majority).

    The image is multiplied by the mask (as :class:`~gpuprep.models.skull_strip.SkullStrip` does)
    and segmented by :class:`~gpuprep.models.inference.SegmentBrain` with its defaults; labels
    outside the mask are 0. It is compared with ``aseg`` (:func:`aseg_tissues`: Dice of CSF, GM
    and WM, CSF being ventricles only there) and with an Atropos map inside the same mask
    (``scripts/atropos_tissues.py``: Dice per tissue and the CSF volume ratio).
    """
    image, meta = read_image(head, dtype="float32")
    brain = read_image(mask)[0] > 0
    voxel_ml = float(np.prod(np.linalg.norm(meta["affine"][:3, :3].numpy(), axis=0))) / 1000
    segment = SegmentBrain("image", output_key="tissue", model=model)
    start = time.perf_counter()
    tissue = segment(make_sample({"image": image * brain}, affine=meta["affine"]))["tissue"] * brain
    result: dict[str, Any] = {"seconds": round(time.perf_counter() - start, 1),
              "volume_ml": {name: round(float((tissue == v).sum()) * voxel_ml, 1) for v, name in TISSUES.items()}}
    if aseg is not None:
        truth = aseg_tissues(read_image(aseg)[0])
        result["aseg_dice"] = {name: _dice(tissue, truth, v) for v, name in TISSUES.items()}
    if atropos is not None:
        other = read_image(atropos)[0] * brain
        result["atropos_dice"] = {name: _dice(tissue, other, v) for v, name in TISSUES.items()}
        result["atropos_volume_ml"] = {name: round(float((other == v).sum()) * voxel_ml, 1)
                                       for v, name in TISSUES.items()}
        result["csf_volume_vs_atropos"] = round(result["volume_ml"]["CSF"] / max(result["atropos_volume_ml"]["CSF"],
                                                                                 1e-9), 3)
        if aseg is not None:
            result["atropos_aseg_dice"] = {name: _dice(other, truth, v) for v, name in TISSUES.items()}
    return result
