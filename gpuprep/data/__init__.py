"""Datasets, collation and the bundled sample data."""

from ..sample import collate, decollate
from .labels import PHANTOM_LABELS, TISSUE_LABELS
from .phantom import phantom
from .sample_data import sample_brain, sample_brain_paths

__all__ = [
    "PHANTOM_LABELS",
    "TISSUE_LABELS",
    "collate",
    "decollate",
    "phantom",
    "sample_brain",
    "sample_brain_paths",
]
