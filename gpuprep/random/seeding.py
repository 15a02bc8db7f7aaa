"""Reproducible per-sample random streams.

The parameters of sample *i* come from a stream seeded by ``(transform seed, epoch, sample
index)``, so a run draws the same parameters whatever the number of DataLoader workers, the
batch size or the device. The streams are Python ``random.Random`` objects: drawing a handful of
numbers from them touches no tensor (so no device synchronisation) and the values are plain
floats, ready for the JSON history. Voxel-level noise is drawn on the data's device from a seed
taken from the same stream.
"""

from __future__ import annotations

import random

import numpy as np

#: Key of a sample's index in its dataset (set by datasets; see :func:`sample_rng`).
SAMPLE_INDEX_KEY = "sample_index"
#: Key of a patch's index among the patches cut from one sample (set by ``RandPatches``).
PATCH_INDEX_KEY = "patch_index"


def sample_seed(*numbers: int) -> int:
    """Mix non-negative integers into one 63-bit seed (NumPy's ``SeedSequence``: well spread).

    Example
    -------
    >>> sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 2, 1)
    True
    """
    state = np.random.SeedSequence([int(n) % 2**63 for n in numbers]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def sample_rng(seed: int, epoch: int, index: int, patch: int | None = None) -> random.Random:
    """The random stream of one sample: seeded by transform seed, epoch and sample index.

    Patches cut from one sample (``patch`` = their index among that sample's patches) get
    streams of their own, so augmentation after patch sampling moves each patch differently.

    Example
    -------
    >>> sample_rng(7, 0, 3).random() == sample_rng(7, 0, 3).random() != sample_rng(7, 0, 3, patch=1).random()
    True
    """
    numbers = (seed, epoch, index) if patch is None else (seed, epoch, index, patch)
    return random.Random(sample_seed(*numbers))
