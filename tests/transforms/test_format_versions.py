"""Files of a newer format than this gpuprep reads are refused by name, never misread (docs/versioning.md)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import gpuprep as gp
from gpuprep.errors import ConfigError
from gpuprep.io.sidecar import SIDECAR_FORMAT
from gpuprep.transforms.compose import PIPELINE_FORMAT


def _written_sidecar(tmp_path):
    """The sidecar of a small image written through LoadImage, Orientation and SaveImage."""
    source = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((6, 5, 4)).astype(np.float32), np.eye(4)), source)
    pipeline = gp.Compose([gp.LoadImage("image"), gp.Orientation("image", "LPS"),
                           gp.SaveImage("image", output_dir=tmp_path / "out")])
    pipeline({"image": str(source)})
    return tmp_path / "out" / "in.json"


def test_sidecar_of_a_newer_format_is_refused_with_both_format_numbers(tmp_path):
    sidecar = _written_sidecar(tmp_path)
    gp.rebuild(sidecar)  # its own format: rebuilt
    content = json.loads(sidecar.read_text())
    content["gpuprep_sidecar"] = SIDECAR_FORMAT + 1
    sidecar.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as error:
        gp.rebuild(sidecar)
    message = str(error.value)
    assert str(sidecar) in message
    assert f"format {SIDECAR_FORMAT + 1}" in message and f"format {SIDECAR_FORMAT}" in message


def test_pipeline_yaml_of_a_newer_format_is_refused_with_both_format_numbers(tmp_path):
    pipeline = gp.Compose([gp.Orientation("image", "RAS"), gp.RandFlip("image")], seed=0)
    path = tmp_path / "pipeline.yaml"
    pipeline.to_yaml(path)
    assert gp.Compose.from_yaml(path).get_config() == pipeline.get_config()  # its own format: read
    path.write_text(path.read_text().replace(f"gpuprep_pipeline: {PIPELINE_FORMAT}",
                                             f"gpuprep_pipeline: {PIPELINE_FORMAT + 1}"))
    with pytest.raises(ConfigError) as error:
        gp.Compose.from_yaml(path)
    message = str(error.value)
    assert str(path) in message
    assert f"format {PIPELINE_FORMAT + 1}" in message and f"format {PIPELINE_FORMAT}" in message


@pytest.mark.parametrize("version", [0, "1", True, None])
def test_pipeline_config_with_an_invalid_format_number_is_refused(version):
    config = gp.Compose([gp.Orientation("image", "RAS")]).get_config()
    config["gpuprep_pipeline"] = version
    with pytest.raises(ConfigError, match="gpuprep_pipeline"):
        gp.Compose.from_config(config)


def test_pipeline_config_without_a_format_number_is_read_as_the_current_format():
    config = gp.Compose([gp.Orientation("image", "RAS")]).get_config()
    del config["gpuprep_pipeline"]
    assert type(gp.Compose.from_config(config).transforms[0]).__name__ == "Orientation"
