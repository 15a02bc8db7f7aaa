"""Datasets, collation and the bundled sample data."""

from ..sample import collate, decollate

__all__ = ["collate", "decollate"]
