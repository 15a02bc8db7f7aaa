"""Dataset: records loaded through a pipeline, sample indices, bad files raised or skipped."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import gpuprep as gp
from gpuprep.data.dataset import Dataset, check_image_file, collate_skip_none
from gpuprep.data.records import DatasetError
from gpuprep.errors import ConfigError, MissingKeyError
from tests.conftest import file_digest

SHAPE = (6, 7, 5)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
KEYS = ["image", "label"]


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


def write_subjects(folder: Path, count: int, seed: int = 0) -> list[dict]:
    """Records of subjects whose image lies in [10 i, 10 i + 1) and whose label is i everywhere.

    So a loaded pair is consistent exactly when floor(image / 10) == label voxel by voxel.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        image = (10 * i + rng.random(SHAPE)).astype(np.float32)
        label = np.full(SHAPE, i, dtype=np.uint8)
        records.append({
            "image": write_nifti(folder / f"sub-{i:02d}_T1w.nii.gz", image),
            "label": write_nifti(folder / f"sub-{i:02d}_dseg.nii.gz", label),
            "age": 20 + i,
        })
    return records


def truncate_gzip_body(path: str | Path) -> None:
    """Replace an image by a large one whose gzip stream is cut in half: the header still parses."""
    big = np.random.default_rng(1).random((40, 40, 40)).astype(np.float32)
    write_nifti(Path(path), big)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def load_pipeline(*extra) -> gp.Compose:
    return gp.Compose([gp.LoadImage(KEYS, labels="label", dtype={"image": "float32"}), *extra], seed=3)


def assert_paired(image: torch.Tensor, label: torch.Tensor) -> None:
    assert torch.equal(torch.floor(image / 10).to(torch.uint8), label)


def test_items_are_read_with_their_index(tmp_path):
    records = write_subjects(tmp_path, 3)
    digests = {p: file_digest(p) for r in records for p in (r["image"], r["label"])}
    data = Dataset(records, transform=load_pipeline())
    assert len(data) == 3 and data.indices == [0, 1, 2]
    for i, record in enumerate(records):
        sample = data[i]
        assert sample["sample_index"] == i and sample["age"] == 20 + i
        for key in KEYS:
            reference = np.asanyarray(nib.load(record[key]).dataobj)
            assert torch.equal(sample[key][0], torch.from_numpy(reference))
            assert torch.equal(gp.get_affine(sample, key), torch.from_numpy(AFFINE))
    assert {p: file_digest(p) for p in digests} == digests


def test_without_transform_items_are_copies_of_the_records(tmp_path):
    records = write_subjects(tmp_path, 2)
    data = Dataset(records)
    item = data[1]
    assert item == {**records[1], "sample_index": 1}
    item["image"] = "changed"
    assert data[1]["image"] == records[1]["image"]
    assert "sample_index" not in records[1]


def test_csv_table_as_records(tmp_path):
    records = write_subjects(tmp_path / "files", 2)
    table = tmp_path / "train.csv"
    table.write_text("image,label\n" + "".join(f"files/{Path(r['image']).name},{r['label']}\n" for r in records))
    data = Dataset(table, transform=load_pipeline())
    assert_paired(data[1]["image"], data[1]["label"])
    assert data[1]["label"].unique().tolist() == [1]


def test_missing_file_raises_with_index_key_and_file(tmp_path):
    records = write_subjects(tmp_path, 3)
    Path(records[1]["label"]).unlink()
    with pytest.raises(DatasetError, match=r"record 1, key 'label', file .*sub-01_dseg.nii.gz: does not exist"):
        Dataset(records, transform=load_pipeline())


def test_missing_file_is_skipped_and_indices_stay_stable(tmp_path):
    records = write_subjects(tmp_path, 4)
    Path(records[1]["label"]).unlink()
    pipeline = load_pipeline(gp.RandGamma("image", log_gamma=0.3))
    with pytest.warns(UserWarning, match="record 1, key 'label'"):
        data = Dataset(records, transform=pipeline, on_error="skip")
    assert len(data) == 3 and data.indices == [0, 2, 3]
    assert [(e["index"], e["key"], e["file"]) for e in data.report] == [(1, "label", records[1]["label"])]
    full = Dataset([records[0], records[2], records[3]], transform=pipeline)
    # skipping record 1 does not change the random draws of records 2 and 3: they keep their indices
    for position, index in enumerate(data.indices):
        sample = data[position]
        assert sample["sample_index"] == index
        reference = pipeline({**records[index], "sample_index": index})
        assert torch.equal(sample["image"], reference["image"])
    assert not torch.equal(full[1]["image"], data[1]["image"])  # renumbered: other draws


def test_unreadable_headers_are_caught_at_construction(tmp_path):
    records = write_subjects(tmp_path, 3)
    Path(records[0]["image"]).write_bytes(b"not an image at all")
    plain = write_nifti(tmp_path / "plain.nii", np.zeros(SHAPE, np.float32))
    Path(plain).write_bytes(Path(plain).read_bytes()[:-100])
    records[2]["image"] = plain
    assert "header cannot be read" in check_image_file(records[0]["image"])
    assert "truncated" in check_image_file(plain)
    with pytest.raises(DatasetError, match="record 0, key 'image'"):
        Dataset(records)
    with pytest.warns(UserWarning):
        data = Dataset(records, on_error="skip")
    assert data.indices == [1]
    assert [(e["index"], e["key"]) for e in data.report] == [(0, "image"), (2, "image")]


def test_corrupt_body_fails_on_read_with_index_and_file(tmp_path):
    records = write_subjects(tmp_path, 3)
    truncate_gzip_body(records[2]["image"])
    data = Dataset(records, transform=load_pipeline())  # the header is fine: construction passes
    assert len(data) == 3
    with pytest.raises(DatasetError, match=r"record 2 \(key 'image', file .*sub-02_T1w.nii.gz\).*truncated") as info:
        data[2]
    assert isinstance(info.value.__cause__, gp.errors.ImageReadError)
    skipping = Dataset(records, transform=load_pipeline(), on_error="skip")
    with pytest.warns(UserWarning, match="record 2"):
        assert skipping[2] is None
    assert [(e["index"], e["key"], e["file"]) for e in skipping.report] == [(2, "image", records[2]["image"])]
    assert "ImageReadError" in skipping.report[0]["error"]


def test_pipeline_mistakes_are_not_skipped(tmp_path):
    records = write_subjects(tmp_path, 2)
    data = Dataset(records, transform=gp.Compose([gp.LoadImage(["image", "mask"], labels="mask")]), on_error="skip")
    with pytest.raises(MissingKeyError, match="mask") as info:
        data[0]
    assert any("record 0" in note for note in getattr(info.value, "__notes__", ["record 0"]))
    assert data.report == []


def test_dataloader_with_workers_drops_bad_samples_and_keeps_pairs(tmp_path):
    records = write_subjects(tmp_path, 9)
    Path(records[3]["label"]).unlink()  # found at construction
    truncate_gzip_body(records[6]["image"])  # found when read, in a worker
    pipeline = load_pipeline(gp.RandFlip(KEYS, axes=(0, 1, 2)))
    with pytest.warns(UserWarning, match="record 3"):
        data = Dataset(records, transform=pipeline, on_error="skip")
    loader = DataLoader(data, batch_size=3, num_workers=2, collate_fn=collate_skip_none)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the worker's warning about record 6
        for batch in loader:
            assert batch is not None
            for sample in gp.decollate(batch):
                index = sample["sample_index"]
                seen.append(index)
                assert_paired(sample["image"], sample["label"])
                assert sample["label"].unique().tolist() == [index]
                reference = pipeline({**records[index], "sample_index": index})
                assert torch.equal(sample["image"], reference["image"])
                assert torch.equal(sample["label"], reference["label"])
    assert seen == [0, 1, 2, 4, 5, 7, 8]


def test_collate_skip_none():
    a = gp.make_sample({"image": torch.zeros(1, 2, 2, 2)})
    b = gp.make_sample({"image": torch.ones(1, 2, 2, 2)})
    batch = collate_skip_none([None, a, None, b])
    assert torch.equal(batch["image"], gp.collate([a, b])["image"])
    assert collate_skip_none([None, None]) is None


def test_set_epoch_reaches_the_pipeline(tmp_path):
    records = write_subjects(tmp_path, 1)
    pipeline = load_pipeline(gp.RandGamma("image", log_gamma=0.3))
    data = Dataset(records, transform=pipeline)
    first = data[0]["history"][-1]["params"]
    data.set_epoch(5)
    assert pipeline.epoch == 5
    assert data[0]["history"][-1]["params"] != first


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"on_error": "ignore"}, "on_error"),
        ({"transform": 3}, "transform must be callable"),
        ({"check_files": "yes"}, "check_files"),
    ],
)
def test_argument_errors(tmp_path, kwargs, words):
    records = write_subjects(tmp_path, 1)
    with pytest.raises(ConfigError, match=words):
        Dataset(records, **kwargs)


def test_every_record_skipped_is_an_error(tmp_path):
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="every record was skipped"):
        Dataset([{"image": str(tmp_path / "gone.nii.gz")}], on_error="skip")
