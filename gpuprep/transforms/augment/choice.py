"""Random choice among transforms, per sample: OneOf and SomeOf."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from ...errors import ConfigError, short_repr
from ...random.seeding import sample_seed
from ...records import to_json
from ...sample import decollate, merge, select
from ..base import Transform, build_transform
from ..random_base import RandomTransform, seed_random_transforms


class OneOf(RandomTransform):
    """Apply one transform chosen at random (by ``weights``) to each sample, with probability ``p``.

    Samples of a batch that chose the same transform are transformed together; the history of
    each sample holds the record of the transform it got (so it replays and inverts as usual).

    Parameters
    ----------
    transforms:
        The candidates (transform objects, or ``{"name", "config"}`` dicts as in a pipeline file).
    weights:
        Relative probabilities, one per candidate; uniform if None.
    p, seed:
        Probability that a sample gets any transform, and the seed of the choice (see
        :class:`~gpuprep.transforms.random_base.RandomTransform`).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> choose = gp.OneOf([gp.RandFlip("image", p=1.0), gp.RandRotate90("image", p=1.0)], seed=0)
    >>> choose(gp.make_sample({"image": torch.rand(1, 4, 4, 4)}))["image"].shape
    torch.Size([1, 4, 4, 4])
    """

    def __init__(
        self,
        transforms: Sequence[Transform | Mapping],
        weights: Sequence[float] | None = None,
        p: float = 1.0,
        seed: int | None = None,
    ):
        children = [_as_transform(t, type(self).__name__, i) for i, t in enumerate(transforms)]
        if not children:
            raise ConfigError(f"{type(self).__name__}: transforms must not be empty")
        keys = list(dict.fromkeys(k for child in children for k in child.keys))
        super().__init__(keys, p=p, seed=seed, allow_missing_keys=True)
        if weights is None:
            weights = [1.0] * len(children)
        weights = list(weights)
        if len(weights) != len(children) or any(
            not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 for w in weights
        ) or sum(weights) <= 0:
            raise ConfigError(
                f"{type(self).__name__}: weights must be one non-negative number per transform "
                f"({len(children)}), not all zero; got {short_repr(weights)}"
            )
        self.transforms = children
        self.weights = [float(w) for w in weights]
        self.set_random_state(None, 0)

    def get_config(self) -> dict:
        config = super().get_config()
        config["transforms"] = [{"name": type(t).__name__, "config": to_json(t.get_config())}
                                for t in self.transforms]
        return config

    def set_random_state(self, pipeline_seed: int | None, epoch: int = 0) -> None:
        super().set_random_state(pipeline_seed, epoch)
        # The candidates draw from seeds derived from this transform's own seed (or the pipeline's).
        base = self.seed if self.seed is not None else pipeline_seed
        seed_random_transforms(self.transforms, None if base is None else sample_seed(base, 1), epoch)

    def choose(self, rng: random.Random) -> list[int]:
        """The candidates one sample gets, in the order they are applied."""
        return rng.choices(range(len(self.transforms)), weights=self.weights, k=1)

    def __call__(self, data: Mapping) -> dict:
        batch, single, keys = self._prepare(data)
        if not keys:
            return dict(data)
        if self.seed is None and self._pipeline_seed is None:  # seed the children per call too
            seed_random_transforms(self.transforms, sample_seed(random.getrandbits(63)), self.epoch)
        plans = [tuple(self.choose(rng)) if rng.random() < self.p else () for rng in self._streams(batch, keys)]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, plan in enumerate(plans):
            groups.setdefault(plan, []).append(index)
        parts = []
        for plan, indices in groups.items():
            part = select(batch, indices)
            for choice in plan:
                part = self.transforms[choice](part)
            parts.append((indices, part))
        out = merge(batch, parts)
        return decollate(out)[0] if single else out


class SomeOf(OneOf):
    """Apply ``k`` transforms chosen at random without repetition (in their listed order) per sample.

    Parameters
    ----------
    transforms, weights, p, seed:
        As in :class:`OneOf`.
    k:
        How many: an int, or a ``(low, high)`` pair drawn per sample (inclusive).

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> some = gp.SomeOf([gp.RandFlip("image", p=1.0), gp.RandAffine("image", rotate=5)], k=(1, 2), seed=0)
    >>> some(gp.make_sample({"image": torch.rand(1, 4, 4, 4)}))["image"].shape
    torch.Size([1, 4, 4, 4])
    """

    def __init__(
        self,
        transforms: Sequence[Transform | Mapping],
        k: int | Sequence[int] = 1,
        weights: Sequence[float] | None = None,
        p: float = 1.0,
        seed: int | None = None,
    ):
        super().__init__(transforms, weights=weights, p=p, seed=seed)
        bounds = (k, k) if isinstance(k, int) else tuple(k)
        if len(bounds) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds) or not (
            0 <= bounds[0] <= bounds[1] <= len(self.transforms)
        ):
            raise ConfigError(
                f"SomeOf: k must be an int or a pair (low, high) with 0 <= low <= high <= {len(self.transforms)}, "
                f"got {k!r}"
            )
        self.k = bounds

    def choose(self, rng: random.Random) -> list[int]:
        count = rng.randint(*self.k)
        remaining, weights, chosen = list(range(len(self.transforms))), list(self.weights), []
        for _ in range(count):
            if sum(weights) <= 0:
                break
            pick = rng.choices(range(len(remaining)), weights=weights, k=1)[0]
            chosen.append(remaining.pop(pick))
            weights.pop(pick)
        return sorted(chosen)


def _as_transform(item, owner: str, position: int) -> Transform:
    if isinstance(item, Transform):
        return item
    if isinstance(item, Mapping) and "name" in item:
        return build_transform(item["name"], item.get("config") or {})
    raise ConfigError(
        f"{owner}: transforms[{position}] must be a transform or a {{'name', 'config'}} dict, got {short_repr(item)}"
    )
