"""Dictionary transforms: the base contract, Compose, history replay and the families."""

from .base import REGISTRY, Transform, build_transform
from .compose import Compose
from .history import replay
from .spatial import Orientation

__all__ = ["REGISTRY", "Compose", "Orientation", "Transform", "build_transform", "replay"]
