"""Per-sample random streams: seeds from NumPy's SeedSequence, independent of batching, one stream per patch."""

from __future__ import annotations

import random

import numpy as np
import pytest

from gpuprep.random.seeding import sample_rng, sample_seed


def test_sample_seed_is_numpys_seed_sequence_folded_to_63_bits():
    for numbers in [(0,), (7, 0, 3), (2**40, 5, 12345, 2)]:
        state = np.random.SeedSequence(list(numbers)).generate_state(2, dtype=np.uint32)
        assert sample_seed(*numbers) == (int(state[0]) << 31) ^ int(state[1])


def test_sample_seeds_are_63_bit_spread_and_depend_on_order():
    seeds = [sample_seed(1, 0, index) for index in range(2000)]
    assert len(set(seeds)) == 2000 and all(0 <= s < 2**63 for s in seeds)
    assert max(seeds) > 2**62 and min(seeds) < 2**61  # spread over the whole range, not small integers
    assert sample_seed(0, 1, 2) != sample_seed(0, 2, 1) != sample_seed(0, 1, 2, 0)
    assert sample_seed(-1) == sample_seed(2**63 - 1)  # numbers are taken modulo 2**63


@pytest.mark.parametrize(("seed", "epoch", "index"), [(0, 0, 0), (42, 3, 17)])
def test_sample_rng_is_python_random_seeded_with_the_mixed_seed(seed, epoch, index):
    stream = sample_rng(seed, epoch, index)
    reference = random.Random(sample_seed(seed, epoch, index))
    assert isinstance(stream, random.Random)
    assert [stream.random() for _ in range(5)] == [reference.random() for _ in range(5)]


def test_streams_differ_by_seed_epoch_index_and_patch_and_repeat_exactly():
    def first(*args, **kwargs):
        return sample_rng(*args, **kwargs).random()

    # (patch=0 is left out: SeedSequence pads its entropy with zeros, so (1, 0, 0, 0) mixes like (1, 0, 0).)
    values = {first(1, 0, 0), first(2, 0, 0), first(1, 1, 0), first(1, 0, 1), first(1, 0, 0, patch=1),
              first(1, 0, 0, patch=2)}
    assert len(values) == 6
    assert first(1, 0, 0) == first(1, 0, 0) and first(1, 0, 0, patch=3) == first(1, 0, 0, patch=3)


def test_stream_values_are_uniform():
    """Over 200 sample streams, the first draws fill ten equal bins evenly (chi-square, 1 % level)."""
    draws = np.array([sample_rng(5, 0, index).random() for index in range(2000)])
    counts = np.histogram(draws, bins=10, range=(0, 1))[0]
    chi2 = ((counts - 200) ** 2 / 200).sum()
    assert chi2 < 21.67  # the 99th percentile of chi-square with 9 degrees of freedom
