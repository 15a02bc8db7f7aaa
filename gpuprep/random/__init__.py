"""Parameter ranges and seeded per-sample sampling for random transforms."""

from .ranges import symmetric_range, uniform_range
from .seeding import PATCH_INDEX_KEY, SAMPLE_INDEX_KEY, sample_rng, sample_seed

__all__ = ["PATCH_INDEX_KEY", "SAMPLE_INDEX_KEY", "sample_rng", "sample_seed", "symmetric_range", "uniform_range"]
