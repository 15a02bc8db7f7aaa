"""Dictionary transforms: the base contract, Compose, history replay/inversion and the families.

Each family package lists its public transforms in its own ``__all__``; they are re-exported
here (and from ``gpuprep``), so adding a transform means exporting it from its family only.
"""

from . import augment, denoise, intensity, mask, spatial
from .augment import *  # noqa: F403
from .base import REGISTRY, Transform, build_transform
from .compose import Compose
from .denoise import *  # noqa: F403
from .history import replay
from .intensity import *  # noqa: F403
from .invert import invert
from .io import LoadImage, SaveImage
from .mask import *  # noqa: F403
from .multimodal import ConcatKeys
from .rebuild import RebuiltRun, rebuild
from .spatial import *  # noqa: F403

__all__ = [
    "REGISTRY",
    "Compose",
    "ConcatKeys",
    "LoadImage",
    "RebuiltRun",
    "SaveImage",
    "Transform",
    "build_transform",
    "invert",
    "rebuild",
    "replay",
    *augment.__all__,
    *denoise.__all__,
    *intensity.__all__,
    *mask.__all__,
    *spatial.__all__,
]
