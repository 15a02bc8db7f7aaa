"""3D U-Nets for brain segmentation and skull stripping: weights shipped in the package, synthetic training.

- :func:`load_pretrained` (``"brain-tissue"``, ``"brain-mask"``) returns a ready model;
- :class:`SegmentBrain` and :class:`SkullStrip` use them inside any pipeline;
- :mod:`gpuprep.models.train` trains them from label maps alone (``python -m gpuprep.models.train``);
- :func:`synthetic_head` builds head label maps (scalp, skull, CSF shells) around a brain;
- :func:`whole_head_labels` builds them from a real head scan and its brain mask (SynthStrip-style);
- :mod:`gpuprep.models.evaluate` and :mod:`gpuprep.models.evaluate_real` measure the models.
"""

from .head_labels import whole_head_labels
from .inference import SegmentBrain
from .pretrained import TASKS, WeightsNotBundledError, load_pretrained, weights_path
from .skull_strip import SkullStrip
from .synth import HEAD_LABELS, brain_mask_of, distance_to_mask, synthetic_head
from .unet import CheckpointError, build_unet, load_checkpoint, save_checkpoint

__all__ = [
    "HEAD_LABELS",
    "TASKS",
    "CheckpointError",
    "SegmentBrain",
    "SkullStrip",
    "WeightsNotBundledError",
    "brain_mask_of",
    "build_unet",
    "distance_to_mask",
    "load_checkpoint",
    "load_pretrained",
    "save_checkpoint",
    "synthetic_head",
    "weights_path",
    "whole_head_labels",
]
