"""CacheDataset: run a pipeline's deterministic prefix once, its random suffix on every access.

The pipeline (a :class:`~gpuprep.Compose`) is split by :func:`split_random` into the
deterministic **prefix** (loading, reorientation, resampling, normalisation...) and the random
**suffix** (augmentation, from the first random transform on). The prefix output of each record
is kept

- in memory (``cache="memory"``): computed **once, at construction**, as MONAI's
  ``CacheDataset`` does, so DataLoader workers forked afterwards share it; a file changed
  afterwards is not seen (build a new dataset);
- or on disk (``cache=<folder>``): computed when first needed and stored as one ``torch.save``
  file per record, read back with ``torch.load(weights_only=True)``.

A disk entry's name is a hash of what the prefix output depends on: the gpuprep version, each
prefix transform's :meth:`~gpuprep.Transform.fingerprint` (its configuration, and for
``SkullStrip``/``SegmentBrain`` the SHA-256 of the weights in use), every record value, and
the identity of every file the record names (:mod:`gpuprep.data.cache_key`: a path given as
``str`` or ``Path``, every file of a DICOM folder, the detached data files of an ``.mhd`` or
``.nhdr`` header). ``cache_key="stat"`` identifies a file by path, size, mtime, ctime and inode
(cheap; catches ``cp -p``); ``cache_key="content"`` by the SHA-256 of its bytes (exact). So a
changed file or a changed prefix gives a new entry, never a stale one. Entries are written to a
temporary file and renamed (atomic), so a reader never sees half an entry and several workers
computing the same entry at once are safe; an entry that cannot be written (a full disk) is
skipped with a warning and the sample is still returned. An entry that cannot be read
(truncated, corrupt) is recomputed with a warning. Old entries are not removed automatically;
:meth:`CacheDataset.clear` empties the folder of cache files.

Exactness: the suffix transforms keep the seeds the full pipeline gave them, and the split is
placed so that no fused resampling is cut in two, so a CacheDataset gives, bit for bit, what
:class:`~gpuprep.data.dataset.Dataset` gives with the full pipeline. (Bit for bit under the same
torch thread count: DataLoader workers run torch with one thread, and a multi-threaded reduction
may differ from a single-threaded one in the last bits; a memory cache is filled in the main
process.)
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from .._version import __version__
from ..errors import ConfigError, short_repr
from ..io.atomic import atomic_path
from ..random.seeding import SAMPLE_INDEX_KEY
from ..transforms.base import Transform
from ..transforms.compose import Compose
from ..transforms.random_base import RandomTransform
from ..validation import check_int
from .cache_key import CACHE_KEY_MODES, record_identity
from .dataset import Dataset

_log = logging.getLogger(__name__)
_ENTRY = re.compile(r"[0-9a-f]{64}\.pt")
_PARTIAL = re.compile(r"\.[0-9a-f]{64}\.pt\..*\.tmp\.pt")


class PipelinePart(Compose):
    """A slice of a :class:`~gpuprep.Compose` whose random transforms keep the full pipeline's seeds.

    A new ``Compose`` of the same transforms would re-derive their seeds from their new
    positions; this one leaves them alone, and :meth:`set_epoch` sets the epoch of the whole
    pipeline (so prefix and suffix stay in step).
    """

    def __init__(self, full: Compose, start: int, stop: int) -> None:  # no Compose.__init__: it would reseed
        self.transforms = list(full.transforms[start:stop])
        self.seed = full.seed
        self.fuse = full.fuse
        self.full = full

    @property
    def epoch(self) -> int:  # type: ignore[override]  # read-only: the full pipeline's epoch, set via set_epoch
        return self.full.epoch

    def set_epoch(self, epoch: int) -> None:
        self.full.set_epoch(epoch)


def split_random(pipeline: Compose, exact: bool = True) -> tuple[PipelinePart, PipelinePart]:
    """Split a pipeline into its deterministic prefix and its random suffix.

    The suffix starts at the first random transform (a
    :class:`~gpuprep.transforms.random_base.RandomTransform`, which includes ``OneOf`` and
    ``SomeOf``). With ``exact=True``, if that transform would be fused with the deterministic
    spatial steps just before it (e.g. ``Resample`` then ``RandAffine``: one resampling), the
    suffix starts with those steps, so ``suffix(prefix(x)) == pipeline(x)`` bit for bit. With
    ``exact=False`` they stay in the prefix (more is cached, but the data are resampled twice:
    equal to the pipeline only within interpolation tolerance).

    Example
    -------
    >>> import gpuprep as gp
    >>> full = gp.Compose([gp.LoadImage("image"), gp.Orientation("image", "RAS"), gp.RandFlip("image")], seed=0)
    >>> prefix, suffix = split_random(full)
    >>> [type(t).__name__ for t in prefix.transforms], [type(t).__name__ for t in suffix.transforms]
    (['LoadImage'], ['Orientation', 'RandFlip'])
    >>> [type(t).__name__ for t in split_random(full, exact=False)[1].transforms]
    ['RandFlip']
    """
    if not isinstance(pipeline, Compose):
        raise ConfigError(f"split_random: pipeline must be a gpuprep Compose, got {type(pipeline).__name__}")
    transforms = pipeline.transforms
    first = next((i for i, t in enumerate(transforms) if isinstance(t, RandomTransform)), len(transforms))
    split = first
    if exact and first < len(transforms):
        start = 0
        for run in pipeline._runs():  # the fusion groups Compose will execute
            if start <= first < start + len(run):
                split = start
                break
            start += len(run)
    return PipelinePart(pipeline, 0, split), PipelinePart(pipeline, split, len(transforms))


class CacheDataset(Dataset):
    """A :class:`~gpuprep.data.dataset.Dataset` that caches the deterministic prefix of its pipeline.

    Parameters
    ----------
    records:
        As for :class:`~gpuprep.data.dataset.Dataset`.
    transform:
        A :class:`~gpuprep.Compose` (or a list of transforms, wrapped in an unseeded one).
        Everything before the first random transform is cached (see :func:`split_random`).
    cache:
        ``"memory"``: every record's prefix is computed **now, at construction** (files changed
        later are not seen); or a folder (created if needed) for one file per record, computed
        when first needed and recomputed whenever a file it depends on changes.
    cache_key:
        How the disk cache tells that a file is unchanged: ``"stat"`` (default; path, size,
        mtime, ctime and inode: one ``stat`` per file, and a rewrite that restores the mtime,
        as ``cp -p`` does, still changes the ctime) or ``"content"`` (path, size and SHA-256
        of the bytes, read once per process: any byte change gives a new entry). See
        :mod:`gpuprep.data.cache_key`.
    on_error, check_files:
        As for :class:`~gpuprep.data.dataset.Dataset`. Records that fail while the memory cache
        is filled are raised or dropped like files failing the check.
    num_workers:
        Threads used by :meth:`precompute` (the memory cache at construction); 0: no threads.
    progress:
        Show a progress bar while precomputing.
    exact:
        See :func:`split_random`.

    Example
    -------
    >>> import gpuprep as gp
    >>> paths = gp.data.sample_brain_paths()
    >>> pipeline = gp.Compose([gp.LoadImage("image", dtype="float32"), gp.RandFlip("image", axes=0)], seed=0)
    >>> cached = CacheDataset([{"image": str(paths["image"])}], pipeline)
    >>> torch.equal(cached[0]["image"], Dataset([{"image": str(paths["image"])}], pipeline)[0]["image"])
    True
    """

    def __init__(
        self,
        records: Sequence[Mapping] | str | os.PathLike,
        transform: Compose | Sequence[Transform],
        cache: str | os.PathLike = "memory",
        on_error: str = "raise",
        num_workers: int = 0,
        progress: bool = False,
        check_files: bool = True,
        exact: bool = True,
        cache_key: str = "stat",
    ) -> None:
        name = type(self).__name__
        if isinstance(transform, Transform):
            transform = Compose([transform])
        elif isinstance(transform, (list, tuple)):
            transform = Compose(transform)
        if not isinstance(transform, Compose):
            raise ConfigError(
                f"{name}: transform must be a gpuprep Compose or a list of transforms, got {type(transform).__name__}"
            )
        check_int(name, "num_workers", num_workers, minimum=0)
        if not isinstance(cache, (str, os.PathLike)) or str(cache) == "":
            raise ConfigError(f"{name}: cache must be 'memory' or a folder path, got {short_repr(cache)}")
        if cache_key not in CACHE_KEY_MODES:
            raise ConfigError(f"{name}: cache_key must be one of {CACHE_KEY_MODES}, got {short_repr(cache_key)}")
        self.cache_key = cache_key
        super().__init__(records, transform, on_error=on_error, check_files=check_files)
        self.prefix, self.suffix = split_random(transform, exact=bool(exact))
        self.num_workers, self.progress = num_workers, bool(progress)
        self.stats = {"hits": 0, "misses": 0, "recomputed": 0, "write_failures": 0}
        self.cache_dir: Path | None = None
        self._memory: list[dict] | None = None
        if isinstance(cache, str) and cache == "memory":
            _log.info("%s: computing the memory cache of %d records now, at construction", name, len(self._records))
            self.precompute()
        else:
            self.cache_dir = Path(cache)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self._config_text = _prefix_fingerprint(self.prefix, name)

    # -- access --------------------------------------------------------------------------------

    def __getitem__(self, position: int) -> dict | None:
        index, record = self._indices[position], self._records[position]
        if self._memory is not None:
            base = {**_copy_structure(self._memory[position]), SAMPLE_INDEX_KEY: index}
        else:
            base = self._guarded(index, record, lambda: self._disk_entry(index, record))
            if base is None:
                return None
        if not self.suffix.transforms:
            return base
        return self._guarded(index, record, lambda: self.suffix(base))

    def precompute(self) -> None:
        """Compute the prefix of every record now (memory: fill it; disk: write missing entries).

        Records that fail are raised or, under ``on_error="skip"``, reported and dropped.
        """
        memory = self.cache_dir is None
        work = self._memory_entry if memory else self._disk_entry

        def one(position: int) -> dict | bool | None:
            index, record = self._indices[position], self._records[position]
            result = self._guarded(index, record, lambda: work(index, record))
            return result if memory or result is None else True  # disk: keep no sample in memory

        positions = range(len(self._records))
        results = []
        with tqdm(total=len(positions), desc=f"{type(self).__name__}: caching", disable=not self.progress) as bar:
            if self.num_workers > 0:
                with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
                    for result in pool.map(one, positions):
                        results.append(result)
                        bar.update()
            else:
                for position in positions:
                    results.append(one(position))
                    bar.update()
        if memory:
            self._memory = [cast(dict, r) for r in results if r is not None]  # in memory, one() gives samples
        self._keep([r is not None for r in results])

    def cache_info(self) -> dict:
        """Where the cache is, how many entries and bytes it holds, and this process's hits/misses.

        ``recomputed`` counts unreadable disk entries that were computed again, ``write_failures``
        entries that could not be written (each warned about).
        """
        if self.cache_dir is None:
            sizes = [t.untyped_storage().nbytes() for s in self._memory or [] for t in _tensors(s)]
            return {"cache": "memory", "entries": len(self._memory or []), "bytes": int(sum(sizes)), **self.stats}
        files = [p for p in self.cache_dir.iterdir() if _ENTRY.fullmatch(p.name)]
        return {
            "cache": str(self.cache_dir),
            "entries": len(files),
            "bytes": sum(p.stat().st_size for p in files),
            **self.stats,
        }

    def clear(self) -> int:
        """Delete this folder's cache entries (and leftover partial writes); return how many.

        Only files named like cache entries are touched. The memory cache cannot be cleared
        (build a new dataset instead).
        """
        if self.cache_dir is None:
            raise ConfigError(f"{type(self).__name__}.clear: the memory cache is filled once; there is no folder")
        removed = 0
        for path in self.cache_dir.iterdir():
            if _ENTRY.fullmatch(path.name) or _PARTIAL.fullmatch(path.name):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def entry_path(self, position: int) -> Path:
        """The disk cache file of the ``position``-th kept record (it may not exist yet)."""
        if self.cache_dir is None:
            raise ConfigError(f"{type(self).__name__}.entry_path: this dataset caches in memory")
        return self.cache_dir / f"{self._key(self._records[position])}.pt"

    # -- internals -------------------------------------------------------------------------------

    def _memory_entry(self, index: int, record: Mapping) -> dict:
        self.stats["misses"] += 1
        return self.prefix({**record, SAMPLE_INDEX_KEY: index})

    def _disk_entry(self, index: int, record: Mapping) -> dict:
        key = self._key(record)
        assert self.cache_dir is not None  # disk entries exist only with a cache_dir
        path = self.cache_dir / f"{key}.pt"
        if path.exists():
            try:
                sample = torch.load(path, weights_only=True)
                if not isinstance(sample, dict):
                    raise TypeError(f"holds a {type(sample).__name__}, not a sample dict")
            except Exception as error:  # any unreadable entry is disposable: recompute it
                warnings.warn(
                    f"{type(self).__name__}: cache entry {path} of record {index} cannot be read "
                    f"({type(error).__name__}: {error}); recomputing it",
                    stacklevel=2,
                )
                self.stats["recomputed"] += 1
            else:
                self.stats["hits"] += 1
                return {**sample, SAMPLE_INDEX_KEY: index}
        self.stats["misses"] += 1
        sample = self.prefix({**record, SAMPLE_INDEX_KEY: index})
        if self._key(record) == key:  # a file that changed while it was read is not stored under its old key
            storable = _storable(sample, type(self).__name__)
            try:
                with atomic_path(path) as tmp:  # a failed write leaves no partial entry behind
                    torch.save(storable, tmp)
            except Exception as error:  # a full disk (OSError; RuntimeError from torch.save) must not lose the sample
                warnings.warn(
                    f"{type(self).__name__}: cannot write cache entry {path} of record {index} "
                    f"({type(error).__name__}: {str(error)[:200]}); the sample is used without being cached",
                    stacklevel=2,
                )
                self.stats["write_failures"] += 1
        return sample

    def _key(self, record: Mapping) -> str:
        described = record_identity(record, self.cache_key)
        text = json.dumps({"prefix": self._config_text, "version": __version__, "cache_key": self.cache_key,
                           "record": described}, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()


def _prefix_fingerprint(prefix: PipelinePart, owner: str) -> str:
    """JSON text of what the prefix output depends on: its transforms' fingerprints (not the seed: it draws nothing)."""
    for transform in prefix.transforms:
        if not isinstance(transform, Transform):
            raise ConfigError(
                f"{owner}: {type(transform).__name__} is not a gpuprep Transform, so the disk cache cannot tell when "
                "its output changes; use cache='memory' or make it a Transform"
            )
    fingerprints = [t.fingerprint() for t in prefix.transforms]
    return json.dumps({"fuse": prefix.fuse, "transforms": fingerprints}, sort_keys=True, default=repr)


def _copy_structure(value: Any) -> Any:
    """Copy dicts and lists (so a caller cannot edit the cache through them); tensors are shared."""
    if isinstance(value, dict):
        return {k: _copy_structure(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_structure(v) for v in value]
    return value


def _tensors(value: Any):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _storable(value: Any, owner: str, where: str = "sample") -> Any:
    """The sample in types ``torch.load(weights_only=True)`` reads; tensors trimmed to their own data."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.untyped_storage().nbytes() != value.numel() * value.element_size() or not value.is_contiguous():
            value = value.clone(memory_format=torch.contiguous_format)  # a view would save its whole base
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {k: _storable(v, owner, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_storable(v, owner, f"{where}[{i}]") for i, v in enumerate(value))
    raise ConfigError(
        f"{owner}: {where} holds a {type(value).__name__}, which the disk cache cannot store "
        "(torch.load(weights_only=True) reads tensors, numbers, strings, lists and dicts); use cache='memory'"
    )
