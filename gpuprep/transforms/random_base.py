"""The base of random transforms: per-sample parameters from seeded streams, probability ``p``.

Drawing and applying are separate, as for every transform: :meth:`RandomTransform.draw` takes a
sample's random stream and returns that sample's parameters (plain JSON numbers); applying is the
same pure function of data and parameters as for deterministic transforms, so a history replays
exactly. A sample skipped by ``p`` records ``{"apply": False}`` and is left as it is.

Reproducibility: sample *i* draws from ``sample_rng(seed, epoch, index)`` where ``index`` is the
sample's ``"sample_index"`` entry (datasets set it) or, without one, its position in the batch.
``seed`` is the transform's own, or one derived from the seed of the :class:`~gpuprep.Compose`
holding it; with neither, every call draws a fresh seed (from Python's ``random`` module).

Each record of a random transform carries the identity of the stream its sample drew from,
``"stream": {"seed", "epoch", "sample_index"}`` (and ``"patch_index"`` for patches), so a pipeline
rebuilt from a sidecar draws the same parameters whatever the position of the transform in it
(:func:`gpuprep.transforms.rebuild.rebuild_from_sidecar`). The stream of a call is remembered on
the transform until its records are written, so one instance should not be called from two
threads at once.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TypedDict

from ..random.seeding import PATCH_INDEX_KEY, SAMPLE_INDEX_KEY, sample_rng, sample_seed
from ..records import random_params
from ..validation import check_bool, check_probability, check_seed
from .base import Transform


class RandomOptionsBesidesP(TypedDict, total=False):
    """The options of :class:`RandomTransform` but ``p``: for subclasses that name ``p`` themselves.

    :class:`~gpuprep.RandFlip` does, for its own default (0.5) and meaning (per axis).
    """

    same_on_batch: bool
    seed: int | None
    allow_missing_keys: bool


class RandomOptions(RandomOptionsBesidesP, total=False):
    """The options every random transform takes and forwards to :class:`RandomTransform` as ``**options``.

    Typing a subclass's ``**options: Unpack[RandomOptions]`` lets type checkers check them; the
    recorded configuration lists them after the subclass's own arguments, in the order and with
    the defaults of :meth:`RandomTransform.__init__` (see
    :func:`gpuprep.transforms.base._recording_init`).

    Example
    -------
    A subclass names its own arguments and forwards these options::

        class RandScale(RandomTransform):
            def __init__(self, keys, factor=(0.9, 1.1), **options: Unpack[RandomOptions]):
                super().__init__(keys, **options)
                self.factor = factor
    """

    p: float


class RandomTransform(Transform, abstract=True):
    """Base class of random transforms.

    Parameters
    ----------
    keys:
        Image keys.
    p:
        Probability that a sample is transformed (drawn per sample).
    same_on_batch:
        Give every sample of a batch the parameters of the first one.
    seed:
        Seed of this transform's streams; None: derived from the Compose seed, or fresh per call.
    allow_missing_keys:
        Skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        p: float = 1.0,
        same_on_batch: bool = False,
        seed: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.p = check_probability(name, "p", p)
        self.same_on_batch = check_bool(name, "same_on_batch", same_on_batch)
        self.seed = check_seed(name, seed)
        self._pipeline_seed: int | None = None
        self.epoch = 0
        self._drawn_streams: list[dict] | None = None

    def set_random_state(self, pipeline_seed: int | None, epoch: int = 0) -> None:
        """Called by :class:`~gpuprep.Compose`: a seed derived from the pipeline's, and the epoch."""
        self._pipeline_seed = pipeline_seed
        self.epoch = int(epoch)

    def draw(self, rng: random.Random) -> dict:
        """Return one sample's random parameters (JSON numbers) drawn from ``rng``."""
        return {}

    def draw_params(self, batch: Mapping, keys: list[str]) -> list[dict]:
        """Per-sample ``{"apply": bool, **draw(rng)}`` (just ``{"apply": False}`` when skipped)."""
        params: list[dict] = []
        for rng in self._streams(batch, keys):
            apply = rng.random() < self.p
            drawn = self.draw(rng)  # drawn even when skipped, so the stream stays aligned
            params.append(random_params(apply, drawn))
        return params

    def make_params(self, batch: dict, keys: list[str]) -> list[dict]:
        return self.draw_params(batch, keys)

    def _streams(self, batch: Mapping, keys: list[str]) -> list[random.Random]:
        size = len(batch[keys[0]])
        indices = batch.get(SAMPLE_INDEX_KEY)
        indices = list(range(size)) if indices is None else [int(i) for i in indices]
        if self.seed is not None:
            seed = self.seed
        elif self._pipeline_seed is not None:
            seed = self._pipeline_seed
        else:
            seed = random.getrandbits(63)
        patches = batch.get(PATCH_INDEX_KEY)
        patches = [None] * size if patches is None else [int(i) for i in patches]
        if self.same_on_batch:
            indices, patches = [indices[0]] * size, [patches[0]] * size
        self._drawn_streams = [
            {"seed": seed, "epoch": self.epoch, "sample_index": index, **({} if p is None else {"patch_index": p})}
            for index, p in zip(indices, patches)
        ]
        return [sample_rng(seed, self.epoch, index, patch) for index, patch in zip(indices, patches)]

    def record_extras(self, size: int) -> list[dict]:
        """``{"stream": {...}}`` per sample: the stream the parameters just made were drawn from."""
        streams, self._drawn_streams = self._drawn_streams, None
        if streams is None or len(streams) != size:
            return super().record_extras(size)
        return [{"stream": stream} for stream in streams]


def seed_random_transforms(transforms: Sequence[Transform], pipeline_seed: int | None, epoch: int) -> None:
    """Give each random transform of a pipeline its own seed derived from the pipeline seed."""
    for position, transform in enumerate(transforms):
        if isinstance(transform, RandomTransform):
            derived = None if pipeline_seed is None else sample_seed(pipeline_seed, position)
            transform.set_random_state(derived, epoch)
