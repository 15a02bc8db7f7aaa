"""JSON sidecars: naming, content, JSON conversion and the rebuildable pipeline."""

from __future__ import annotations

import datetime
import json
import pathlib

import numpy as np
import pytest
import torch

import gpuprep as gp
import gpuprep.io as gio
from gpuprep.errors import ConfigError, ImageReadError
from gpuprep.records import to_json


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("a/sub-01_T1w.nii.gz", "a/sub-01_T1w.json"),
        ("a/sub-01_T1w.nii", "a/sub-01_T1w.json"),
        ("brain.MGZ", "brain.json"),
        ("x.nrrd", "x.json"),
        ("x.mha", "x.json"),
        ("dicom_folder", "dicom_folder.json"),
        ("v1.2.nii.gz", "v1.2.json"),
    ],
)
def test_sidecar_path(image, expected):
    assert gio.sidecar_path(image) == pathlib.Path(expected)


def test_written_sidecar_content(tmp_path):
    history = [
        {"name": "LoadImage", "keys": ["image"], "config": {"keys": ["image"]}, "params": {"image": {}}},
        {
            "name": "Orientation",
            "keys": ["image"],
            "config": {"keys": ["image"], "axcodes": "RAS", "allow_missing_keys": False},
            "params": {"image": {"ornt": np.array([[0, 1], [1, 1], [2, -1]])}},
        },
    ]
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    data = torch.zeros(2, 3, 4, 5, dtype=torch.int16)
    path = gio.write_image(
        tmp_path / "out.nii.gz", data, affine, history=history, source="/data/in.nii.gz",
        extra_sidecar={"Task": "demo", "Scale": np.float32(0.5)},
    )
    text = (tmp_path / "out.json").read_text()
    sidecar = json.loads(text)  # strict JSON
    assert sidecar == gio.read_sidecar(path) == gio.read_sidecar(tmp_path / "out.json")
    assert sidecar["gpuprep_version"] == gp.__version__
    created = datetime.datetime.fromisoformat(sidecar["created"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert {"python", "torch", "numpy", "nibabel"} <= set(sidecar["versions"])
    assert sidecar["versions"]["torch"] == torch.__version__
    assert sidecar["source"] == "/data/in.nii.gz"
    assert sidecar["output"] == {
        "filename": "out.nii.gz",
        "format": "nifti1",
        "shape": [2, 3, 4, 5],
        "dtype": "int16",
        "affine": affine.tolist(),
        "device": "cpu",
    }
    assert sidecar["history"][1]["params"]["image"]["ornt"] == [[0, 1], [1, 1], [2, -1]]
    # The pipeline reruns the whole run, IO steps included (no random step: no stream, no sample index).
    assert sidecar["pipeline"] == {
        "gpuprep_pipeline": 1,
        "seed": None,
        "epoch": 0,
        "fuse": False,
        "transforms": [{"name": "LoadImage", "config": history[0]["config"]},
                       {"name": "Orientation", "config": history[1]["config"]}],
    }
    assert sidecar["sample_index"] is None and sidecar["gpuprep_sidecar"] == 2
    assert (sidecar["Task"], sidecar["Scale"]) == ("demo", 0.5)
    assert "NaN" not in text


def test_pipeline_is_rebuildable(tmp_path):
    history = [{"name": "Orientation", "keys": ["image"], "config": {"keys": ["image"], "axcodes": "LPS"},
                "params": {}}]
    path = gio.write_image(tmp_path / "x.nii", torch.zeros(1, 2, 2, 2), torch.eye(4), history=history)
    pipeline = gp.Compose.from_config(gio.read_sidecar(path)["pipeline"])
    assert [type(t).__name__ for t in pipeline.transforms] == ["Orientation"]
    assert pipeline.transforms[0].axcodes == "LPS"


def test_no_sidecar_on_request(tmp_path):
    gio.write_image(tmp_path / "x.nii.gz", torch.zeros(1, 2, 2, 2), torch.eye(4), sidecar=False)
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]


def test_extra_fields_may_not_replace_standard_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"\['history'\]"):
        gio.write_image(
            tmp_path / "x.nii.gz", torch.zeros(1, 2, 2, 2), torch.eye(4), extra_sidecar={"history": []}
        )
    assert list(tmp_path.iterdir()) == []


def test_to_json_conversions():
    value = {
        1: (torch.tensor([1.5, float("inf")]), np.int64(3)),
        "path": pathlib.Path("/a/b"),
        "dtype": torch.float32,
        "nan": float("nan"),
        "set": {2},
    }
    assert to_json(value) == {
        "1": [[1.5, None], 3],
        "path": "/a/b",
        "dtype": "torch.float32",
        "nan": None,
        "set": [2],
    }
    json.dumps(to_json(value), allow_nan=False)


def test_read_sidecar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"x\.json"):
        gio.read_sidecar(tmp_path / "x.nii.gz")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ImageReadError, match=r"bad\.json: not a valid JSON sidecar"):
        gio.read_sidecar(tmp_path / "bad.json")
