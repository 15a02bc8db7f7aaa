"""CacheDataset: same samples as Dataset, prefix computed once, disk entries keyed, atomic and self-healing."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import gpuprep as gp
from gpuprep.data.cache import CacheDataset, split_random
from gpuprep.data.dataset import Dataset, collate_skip_none
from gpuprep.errors import ConfigError
from gpuprep.transforms.io import LoadImage
from tests.conftest import file_digest
from tests.data.test_dataset import KEYS, truncate_gzip_body, write_nifti, write_subjects


def augmenting(seed: int = 7, resample: float = 3.0) -> gp.Compose:
    """Load -> grid steps -> ZNormalize (ends the fused run) -> augmentation with every kind of random step."""
    return gp.Compose([
        gp.LoadImage(KEYS, labels="label", dtype={"image": "float32"}),
        gp.Orientation(KEYS, "RAS"),
        gp.Resample(KEYS, spacing=resample),
        gp.CropOrPad(KEYS, (6, 6, 6)),
        gp.ZNormalize("image"),
        gp.RandAffine(KEYS, rotate=15, scale=0.1),
        gp.RandFlip(KEYS),
        gp.RandGamma("image", p=0.7),
        gp.OneOf([gp.RandNoise("image", std=0.1), gp.RandBlur("image", std=(0.5, 1.0))]),
    ], seed=seed)


def fused_into_augmentation(seed: int = 7) -> gp.Compose:
    """The grid steps fuse with RandAffine: the exact split must leave them in the suffix."""
    return gp.Compose([
        gp.LoadImage(KEYS, labels="label", dtype={"image": "float32"}),
        gp.ZNormalize("image"),
        gp.Resample(KEYS, spacing=3.0),
        gp.CropOrPad(KEYS, (6, 6, 6)),
        gp.RandAffine(KEYS, rotate=15, scale=0.1),
        gp.RandNoise("image", std=0.1),
    ], seed=seed)


def assert_same(a, b, where: str = "sample") -> None:
    """Exactly equal: tensors bit for bit with the same dtype, everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture
def records(tmp_path):
    return write_subjects(tmp_path / "data", 4, seed=5)


@pytest.fixture
def count_loads(monkeypatch):
    """Count LoadImage calls (the first step of every prefix here)."""
    calls = []
    original = LoadImage.__call__

    def counting(self, data):
        calls.append(data.get("sample_index"))
        return original(self, data)

    monkeypatch.setattr(LoadImage, "__call__", counting)
    return calls


# -- splitting ------------------------------------------------------------------------------------


def names(part) -> list[str]:
    return [type(t).__name__ for t in part.transforms]


def test_split_at_the_first_random_transform():
    prefix, suffix = split_random(augmenting())
    assert names(prefix) == ["LoadImage", "Orientation", "Resample", "CropOrPad", "ZNormalize"]
    assert names(suffix) == ["RandAffine", "RandFlip", "RandGamma", "OneOf"]


def test_exact_split_keeps_fused_steps_together():
    pipeline = fused_into_augmentation()
    prefix, suffix = split_random(pipeline)
    assert names(prefix) == ["LoadImage", "ZNormalize"]
    assert names(suffix) == ["Resample", "CropOrPad", "RandAffine", "RandNoise"]
    _, loose_suffix = split_random(pipeline, exact=False)
    assert names(loose_suffix) == ["RandAffine", "RandNoise"]
    assert names(split_random(gp.Compose([gp.LoadImage("image"), gp.Flip("image", 0)], fuse=False))[1]) == []


def test_choice_transforms_count_as_random():
    pipeline = gp.Compose([gp.LoadImage("image"), gp.SomeOf([gp.Flip("image", 0), gp.Flip("image", 1)]),
                           gp.ZNormalize("image")], seed=0)
    assert names(split_random(pipeline)[1]) == ["SomeOf", "ZNormalize"]


def test_suffix_keeps_the_seeds_of_the_full_pipeline(records):
    pipeline = fused_into_augmentation()
    prefix, suffix = split_random(pipeline)
    for index in (0, 3):
        sample = {**records[index], "sample_index": index}
        assert_same(suffix(prefix(sample)), pipeline(sample))
    seeds = [t._pipeline_seed for t in pipeline.transforms if isinstance(t, gp.transforms.random_base.RandomTransform)]
    suffix.set_epoch(2)
    assert pipeline.epoch == 2 and suffix.epoch == 2
    assert seeds == [t._pipeline_seed for t in suffix.transforms if hasattr(t, "_pipeline_seed")]


def test_split_needs_a_compose():
    with pytest.raises(ConfigError, match="Compose"):
        split_random([gp.LoadImage("image")])


# -- same output as Dataset ------------------------------------------------------------------------


@pytest.mark.parametrize("make_pipeline", [augmenting, fused_into_augmentation])
@pytest.mark.parametrize("where", ["memory", "disk"])
def test_cached_output_equals_dataset_output(tmp_path, records, make_pipeline, where):
    cache = "memory" if where == "memory" else tmp_path / "cache"
    plain = Dataset(records, make_pipeline())
    cached = CacheDataset(records, make_pipeline(), cache=cache)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for _ in range(2):  # disk: first computed and stored, then read back
            for i in range(len(records)):
                assert_same(cached[i], plain[i], f"{where} epoch {epoch} item {i}")


def test_without_random_suffix(tmp_path, records):
    pipeline = gp.Compose([gp.LoadImage(KEYS, labels="label"), gp.Orientation(KEYS, "LPS"), gp.ZNormalize("image")])
    plain = Dataset(records, pipeline)
    for cache in ("memory", tmp_path / "cache"):
        data = CacheDataset(records, pipeline, cache=cache)
        first = data[1]
        assert_same(first, plain[1])
        first["image_meta"]["affine"] = None  # editing what we got must not edit the cache
        first["history"].clear()
        assert_same(data[1], plain[1])


def test_memory_cache_runs_the_prefix_once_at_construction(records, count_loads):
    data = CacheDataset(records, augmenting(), num_workers=2, progress=False)
    assert sorted(count_loads) == [0, 1, 2, 3]
    for epoch in range(2):
        data.set_epoch(epoch)
        [data[i] for i in range(len(data))]
    assert len(count_loads) == 4
    assert data.cache_info()["entries"] == 4


# -- disk cache -----------------------------------------------------------------------------------


def test_disk_cache_second_epoch_reads_entries(tmp_path, records, count_loads):
    digests = {p: file_digest(p) for r in records for p in (r["image"], r["label"])}
    data = CacheDataset(records, augmenting(), cache=tmp_path / "cache")
    assert count_loads == []  # lazy
    first = [data[i] for i in range(4)]
    assert count_loads == [0, 1, 2, 3]
    second = [data[i] for i in range(4)]
    assert count_loads == [0, 1, 2, 3]
    for a, b in zip(first, second):
        assert_same(a, b)
    info = data.cache_info()
    assert (info["entries"], info["hits"], info["misses"], info["recomputed"]) == (4, 4, 4, 0)
    for position in range(4):  # an entry is the prefix output, read with weights_only (no pickled code)
        entry = torch.load(data.entry_path(position), weights_only=True)
        assert_same(entry, data.prefix({**records[position], "sample_index": position}))
    assert {p: file_digest(p) for p in digests} == digests


def test_changed_input_file_is_recomputed(tmp_path, records, count_loads):
    data = CacheDataset(records, augmenting(), cache=tmp_path / "cache")
    old_entry = data.entry_path(2)
    data[2]
    stat = os.stat(records[2]["image"])
    # same size, new content and mtime
    write_nifti(Path(records[2]["image"]), np.full((6, 7, 5), 20.5, np.float32))
    os.utime(records[2]["image"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert data.entry_path(2) != old_entry
    sample = data[2]
    assert count_loads == [2, 2]
    assert_same(sample, Dataset(records, augmenting())[2])
    count_loads.clear()
    assert_same(data[2], sample)  # stored under the new key
    assert count_loads == []
    # touching alone (same bytes, new mtime) is a change too
    stat = os.stat(records[2]["label"])
    os.utime(records[2]["label"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    data[2]
    assert count_loads == [2]


def test_key_depends_on_the_prefix_not_on_the_augmentation(tmp_path, records):
    folder = tmp_path / "cache"
    base = CacheDataset(records, augmenting(seed=7), cache=folder).entry_path(0)
    assert CacheDataset(records, augmenting(seed=99), cache=folder).entry_path(0) == base
    assert CacheDataset(records, augmenting(resample=2.5), cache=folder).entry_path(0) != base
    changed_record = [{**r, "age": 99} for r in records]
    assert CacheDataset(changed_record, augmenting(), cache=folder).entry_path(0) != base


def test_truncated_entry_is_recomputed_with_a_warning(tmp_path, records, count_loads):
    data = CacheDataset(records, augmenting(), cache=tmp_path / "cache")
    expected = data[1]
    entry = data.entry_path(1)
    entry.write_bytes(entry.read_bytes()[:200])
    with pytest.warns(UserWarning, match="cannot be read"):
        again = data[1]
    assert_same(again, expected)
    assert count_loads == [1, 1] and data.cache_info()["recomputed"] == 1
    torch.load(entry, weights_only=True)  # rewritten whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(data[1], expected)


def test_same_entry_computed_concurrently(tmp_path, records):
    # eight records naming the same files share one entry: four threads race to write it
    same = [dict(records[0]) for _ in range(8)]
    folder = tmp_path / "cache"
    data = CacheDataset(same, augmenting(), cache=folder, num_workers=4)
    data.precompute()
    assert sorted(p.name for p in folder.iterdir()) == [data.entry_path(0).name]
    plain = Dataset(same, augmenting())
    for i in range(8):
        assert_same(data[i], plain[i])  # each keeps its own sample_index, so its own augmentation
        assert data[i]["sample_index"] == i


def test_dataloader_with_workers_over_disk_cache(tmp_path, records):
    same = records + [dict(r) for r in records]  # duplicates: both workers may write the same entry
    folder = tmp_path / "cache"
    pipeline = augmenting()
    data = CacheDataset(same, pipeline, cache=folder)
    plain = Dataset(same, augmenting())
    for epoch in range(2):
        data.set_epoch(epoch)
        plain.set_epoch(epoch)
        loader = DataLoader(data, batch_size=3, num_workers=2, collate_fn=collate_skip_none)
        got = [s for batch in loader for s in gp.decollate(batch)]
        assert [s["sample_index"] for s in got] == list(range(8))
        for sample in got:
            assert_same(sample, plain[sample["sample_index"]])
    assert len([p for p in folder.iterdir()]) == 4  # no partial files left


def test_clear_and_info(tmp_path, records):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    data = CacheDataset(records, augmenting(), cache=folder)
    [data[i] for i in range(4)]
    info = data.cache_info()
    assert info["entries"] == 4 and info["bytes"] == sum(data.entry_path(i).stat().st_size for i in range(4))
    assert data.clear() == 4
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    with pytest.raises(ConfigError, match="memory"):
        CacheDataset(records, augmenting()).clear()


# -- faults ---------------------------------------------------------------------------------------


def test_corrupt_input_skipped_in_memory_and_on_disk(tmp_path, records):
    truncate_gzip_body(records[1]["image"])
    with pytest.warns(UserWarning, match="record 1"):
        memory = CacheDataset(records, augmenting(), on_error="skip")
    assert memory.indices == [0, 2, 3] and [e["index"] for e in memory.report] == [1]
    assert memory[1]["sample_index"] == 2
    disk = CacheDataset(records, augmenting(), cache=tmp_path / "cache", on_error="skip")
    with pytest.warns(UserWarning, match="record 1"):
        assert disk[1] is None
    assert [(e["index"], e["key"]) for e in disk.report] == [(1, "image")]
    with pytest.raises(gp.data.records.DatasetError, match="record 1"):
        CacheDataset(records, augmenting())


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"transform": lambda s: s}, "Compose"),
        ({"num_workers": -1}, "num_workers"),
        ({"cache": ""}, "cache"),
        ({"on_error": "drop"}, "on_error"),
    ],
)
def test_argument_errors(records, kwargs, words):
    arguments = {"transform": augmenting(), **kwargs}
    with pytest.raises(ConfigError, match=words):
        CacheDataset(records, **arguments)


def test_cache_key_of_a_single_dcm_path_covers_its_series_folder(tmp_path):
    """A .dcm path reads its whole series, so a changed sibling slice must change the cache key."""
    pytest.importorskip("SimpleITK")
    from tests.io.test_dicom import _write_slices

    _write_slices(tmp_path / "series", [0.0, 2.0, 4.0])
    records = [{"image": str(tmp_path / "series" / "im000.dcm")}]
    pipeline = gp.Compose([gp.LoadImage("image")])
    base = CacheDataset(records, pipeline, cache=tmp_path / "cache").entry_path(0)
    sibling = tmp_path / "series" / "im002.dcm"
    stat = os.stat(sibling)
    os.utime(sibling, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert CacheDataset(records, pipeline, cache=tmp_path / "cache").entry_path(0) != base
