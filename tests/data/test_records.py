"""Records from lists, CSV tables, folders and BIDS trees: pairing, resolution and clear errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gpuprep.data.records import (
    DatasetError,
    as_records,
    parse_bids_name,
    records_from_bids,
    records_from_csv,
    records_from_folder,
)
from gpuprep.errors import ConfigError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# -- as_records -------------------------------------------------------------------------------


def test_as_records_copies_and_checks_keys():
    given = [{"image": "a.nii.gz", "age": 30}, {"image": "b.nii.gz", "age": 41}]
    records = as_records(given)
    assert records == given
    records[0]["image"] = "changed"
    assert given[0]["image"] == "a.nii.gz"


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ([], "must not be empty"),
        ([{"image": "a.nii"}, {"image": "b.nii", "label": "c.nii"}], "same keys"),
        ([{"image": "a.nii"}, "b.nii"], "records[1]"),
        ({"image": "a.nii"}, "list of dicts"),
        ("some/folder", ".csv"),
    ],
)
def test_as_records_rejects_bad_input(bad, words):
    with pytest.raises(ConfigError) as info:
        as_records(bad)
    assert words in str(info.value)


def test_as_records_reads_a_csv_path(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("image\nx.nii.gz\n")
    assert as_records(str(table)) == [{"image": str(tmp_path / "x.nii.gz")}]


# -- CSV ----------------------------------------------------------------------------------------


def test_csv_resolves_relative_paths_against_its_folder_and_keeps_other_columns(tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    table = folder / "train.csv"
    absolute = tmp_path / "abs" / "sub-02_T1w.nii"
    table.write_text(
        "image,label,age,subject\n"
        "imgs/sub-01_T1w.nii.gz,segs/sub-01_dseg.nii.gz,34,sub-01\n"
        f"{absolute},segs/sub-02_dseg.mgz,41,sub-02\n"
    )
    records = records_from_csv(table)
    assert records == [
        {"image": str(folder / "imgs/sub-01_T1w.nii.gz"), "label": str(folder / "segs/sub-01_dseg.nii.gz"),
         "age": "34", "subject": "sub-01"},
        {"image": str(absolute), "label": str(folder / "segs/sub-02_dseg.mgz"), "age": "41", "subject": "sub-02"},
    ]


def test_csv_root_and_explicit_columns(tmp_path):
    table = tmp_path / "t.tsv"
    table.write_text("scan\tnotes\nsub-01.img\tsub-01.txt\n")
    records = records_from_csv(table, columns=["scan"], root=tmp_path / "data")
    assert records == [{"scan": str(tmp_path / "data" / "sub-01.img"), "notes": "sub-01.txt"}]


def test_csv_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        records_from_csv(tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match="empty"):
        records_from_csv(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("image,label\n")
    with pytest.raises(DatasetError, match="no rows"):
        records_from_csv(header_only)
    table = tmp_path / "t.csv"
    table.write_text("image,label\na.nii.gz,b.nii.gz\n")
    with pytest.raises(DatasetError, match=r"\['mask'\] not in the table.*\['image', 'label'\]"):
        records_from_csv(table, columns=["image", "mask"])
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("image,label\na.nii.gz,b.nii.gz\nc.nii.gz\n")
    with pytest.raises(DatasetError, match="line 3: 1 fields"):
        records_from_csv(ragged)
    hole = tmp_path / "hole.csv"
    hole.write_text("image,label\na.nii.gz,b.nii.gz\nc.nii.gz,\n")
    with pytest.raises(DatasetError, match="line 3: column 'label' holds no path"):
        records_from_csv(hole)
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("image,image\na.nii,b.nii\n")
    with pytest.raises(DatasetError, match="every column once"):
        records_from_csv(repeated)


# -- folders ------------------------------------------------------------------------------------


def test_folder_pairs_by_identifier_not_by_listing_order(tmp_path):
    subjects = [f"sub-{i:02d}" for i in range(8)]
    names = [f"{s}_T1w.nii.gz" for s in subjects] + [f"{s}_dseg.nii.gz" for s in subjects]
    random.Random(0).shuffle(names)
    for name in names:
        touch(tmp_path / name)
    # a label-only folder level and an extra file of another kind must not disturb the pairing
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "._sub-00_T1w.nii.gz")  # macOS resource fork: hidden, ignored
    records = records_from_folder(tmp_path, {"image": "*_T1w.nii.gz", "label": "*_dseg.nii.gz"})
    assert [r["id"] for r in records] == subjects
    for record in records:
        assert Path(record["image"]).name == f"{record['id']}_T1w.nii.gz"
        assert Path(record["label"]).name == f"{record['id']}_dseg.nii.gz"


def test_folder_patterns_with_folders(tmp_path):
    for subject in ("b", "a"):
        touch(tmp_path / "images" / subject / "t1.nii.gz")
        touch(tmp_path / "labels" / f"{subject}_seg.nii.gz")
    touch(tmp_path / "deep" / "x" / "y" / "c_T1.nii")
    records = records_from_folder(tmp_path, {"image": "images/*/t1.nii.gz", "label": "labels/*_seg.nii.gz"})
    assert [(r["id"], r["image"], r["label"]) for r in records] == [
        (s, str(tmp_path / "images" / s / "t1.nii.gz"), str(tmp_path / "labels" / f"{s}_seg.nii.gz"))
        for s in ("a", "b")
    ]
    deep = records_from_folder(tmp_path, {"image": "**/*_T1.nii"})
    assert [(r["id"], Path(r["image"]).name) for r in deep] == [("deep/x/y/c", "c_T1.nii")]


def test_folder_identifier_is_everything_the_wildcards_match(tmp_path):
    touch(tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    touch(tmp_path / "sub-01" / "anat" / "sub-01_dseg.nii.gz")
    records = records_from_folder(tmp_path, {"image": "*/anat/*_T1w.nii.gz", "label": "*/anat/*_dseg.nii.gz"})
    assert [r["id"] for r in records] == ["sub-01/sub-01"]


def test_folder_unmatched_files_raise_or_are_skipped(tmp_path):
    for subject in ("sub-01", "sub-02", "sub-03"):
        touch(tmp_path / f"{subject}_T1w.nii.gz")
    touch(tmp_path / "sub-01_dseg.nii.gz")
    touch(tmp_path / "sub-03_dseg.nii.gz")
    touch(tmp_path / "sub-04_dseg.nii.gz")
    patterns = {"image": "*_T1w.nii.gz", "label": "*_dseg.nii.gz"}
    with pytest.raises(DatasetError) as info:
        records_from_folder(tmp_path, patterns)
    assert "sub-02_T1w.nii.gz" in str(info.value) and "sub-04_dseg.nii.gz" in str(info.value)
    with pytest.warns(UserWarning, match="sub-02_T1w"):
        records = records_from_folder(tmp_path, patterns, on_error="skip")
    assert [r["id"] for r in records] == ["sub-01", "sub-03"]


def test_folder_argument_errors(tmp_path):
    touch(tmp_path / "a_T1w.nii.gz")
    with pytest.raises(DatasetError, match="matches no file"):
        records_from_folder(tmp_path, {"image": "*_T1w.nii.gz", "label": "*_seg.nii.gz"})
    with pytest.raises(ConfigError, match="wildcard"):
        records_from_folder(tmp_path, {"image": "a_T1w.nii.gz"})
    with pytest.raises(ConfigError, match="on_error"):
        records_from_folder(tmp_path, {"image": "*.nii.gz"}, on_error="ignore")
    with pytest.raises(FileNotFoundError):
        records_from_folder(tmp_path / "nope", {"image": "*.nii.gz"})


# -- BIDS ---------------------------------------------------------------------------------------


def test_parse_bids_name():
    assert parse_bids_name("sub-01_ses-pre_run-2_T1w.nii") == ({"sub": "01", "ses": "pre", "run": "2"}, "T1w")
    with pytest.raises(DatasetError, match="key-value"):
        parse_bids_name("sub01_T1w.nii.gz")


def _bids_tree(root: Path) -> None:
    touch(root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz")
    touch(root / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz")
    touch(root / "sub-02" / "anat" / "sub-02_run-1_T1w.nii.gz")
    touch(root / "sub-02" / "anat" / "sub-02_run-2_T1w.nii.gz")
    touch(root / "sub-02" / "anat" / "sub-02_run-1_T2w.nii.gz")
    touch(root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.json")
    labels = root / "derivatives" / "seg"
    touch(labels / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_desc-aseg_dseg.nii.gz")
    touch(labels / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_desc-aseg_dseg.nii.gz")
    touch(labels / "sub-02" / "anat" / "sub-02_run-1_desc-aseg_dseg.nii.gz")
    touch(labels / "sub-02" / "anat" / "sub-02_run-2_desc-aseg_dseg.nii.gz")
    touch(labels / "sub-02" / "anat" / "sub-02_run-2_desc-other_dseg.nii.gz")


def test_bids_labels_are_matched_by_every_entity(tmp_path):
    _bids_tree(tmp_path)
    labels = tmp_path / "derivatives" / "seg"
    records = records_from_bids(tmp_path, label="desc-aseg_dseg", label_root=labels)
    assert len(records) == 4
    for record in records:
        image_entities, _ = parse_bids_name(Path(record["image"]).name)
        label_entities, suffix = parse_bids_name(Path(record["label"]).name)
        assert suffix == "dseg" and label_entities == {**image_entities, "desc": "aseg"}
        assert record["subject"] == image_entities["sub"]
        assert record["session"] == image_entities.get("ses")
    assert [Path(r["image"]).name for r in records] == sorted(Path(r["image"]).name for r in records)


def test_bids_ambiguous_or_missing_label(tmp_path):
    _bids_tree(tmp_path)
    labels = tmp_path / "derivatives" / "seg"
    with pytest.raises(DatasetError, match="2 labels") as info:
        records_from_bids(tmp_path, label_root=labels)
    assert "sub-02_run-2_T1w" in str(info.value)
    with pytest.warns(UserWarning, match="sub-02_run-2_T1w"):
        records = records_from_bids(tmp_path, label_root=labels, on_error="skip")
    assert len(records) == 3
    with pytest.raises(DatasetError, match="no label"):
        records_from_bids(tmp_path)  # no dseg beside the images


def test_bids_without_labels_or_sessions(tmp_path):
    _bids_tree(tmp_path)
    t2 = records_from_bids(tmp_path, image="T2w", label=None)
    assert t2 == [{"image": str(tmp_path / "sub-02" / "anat" / "sub-02_run-1_T2w.nii.gz"), "subject": "02"}]
    with pytest.raises(DatasetError, match="no sub-"):
        records_from_bids(tmp_path, image="FLAIR", label=None)
    with pytest.raises(ConfigError, match="image"):
        records_from_bids(tmp_path, image="_T1w")
