"""gpuprep without MONAI (the ``models`` extra not installed): what needs it says which extra to install.

``import gpuprep``, the whole API, ``gpuprep --help`` and ``gpuprep demo`` work without it; the
shipped U-Nets (``build_unet``, ``load_pretrained``, ``SegmentBrain``, ``gpuprep segment``),
training and ``gp.to_monai`` raise :class:`~gpuprep.errors.MissingDependencyError`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import gpuprep as gp
from gpuprep.cli.main import main
from gpuprep.errors import MissingDependencyError
from gpuprep.models.train import train

INSTALL = r'needs MONAI.*; install it with: pip install "gpuprep\[models\]"'


@pytest.fixture
def no_monai(monkeypatch):
    """Import MONAI (or any of its modules) as if it were not installed, until the test ends."""
    for name in [name for name in sys.modules if name.startswith("monai.")]:
        monkeypatch.delitem(sys.modules, name)  # else a cached submodule would still import
    monkeypatch.setitem(sys.modules, "monai", None)


def test_no_monai_fixture_blocks_the_import(no_monai):
    with pytest.raises(ImportError):
        import monai.networks.nets  # noqa: F401


def test_building_a_unet_names_the_models_extra(no_monai):
    architecture = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
                    "num_res_units": 1}
    with pytest.raises(MissingDependencyError, match="the gpuprep U-Net " + INSTALL):
        gp.models.build_unet(architecture)


def test_shipped_models_name_the_models_extra(no_monai):
    with pytest.raises(MissingDependencyError, match=INSTALL):
        gp.models.load_pretrained("brain-mask", device="cpu")
    with pytest.raises(MissingDependencyError, match=INSTALL):
        gp.SegmentBrain("image", device="cpu")(gp.data.phantom(shape=(16, 16, 16), seed=0))


def test_training_names_the_models_extra(no_monai):
    with pytest.raises(MissingDependencyError, match="train " + INSTALL):
        train("brain-tissue", steps=1, progress=False)


def test_to_monai_names_the_models_extra(no_monai):
    with pytest.raises(MissingDependencyError, match="gp.to_monai " + INSTALL):
        gp.to_monai(gp.data.phantom(shape=(8, 8, 8), seed=0))


def test_transforms_run_without_monai(no_monai):
    sample = gp.data.phantom(shape=(8, 8, 8), seed=0)
    out = gp.Compose([gp.Orientation(["image", "label"], "LPS"), gp.ZNormalize("image")])(sample)
    assert out["image"].shape == sample["image"].shape and torch.equal(out["label"].flip(1, 2), sample["label"])


def test_segment_command_fails_in_one_line_and_writes_nothing(no_monai, tmp_path, capsys):
    path = gp.data.sample_brain_paths()["image"]
    assert main(["segment", str(path), str(tmp_path / "seg.nii.gz"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("gpuprep segment: error: ")
    assert 'pip install "gpuprep[models]"' in error
    assert list(tmp_path.iterdir()) == []


def test_demo_runs_without_monai(no_monai, tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "out"), "--device", "cpu"]) == 0
    written = {path.name for path in (tmp_path / "out").iterdir()}
    assert {"sample_t1w_preprocessed.nii.gz", "sample_t1w_preprocessed.json", "sample_t1w_qc.png"} <= written


def test_import_the_whole_api_and_help_without_monai():
    """In a new interpreter where MONAI cannot be imported: ``import gpuprep``, every public name, ``--help``."""
    code = textwrap.dedent("""
        import sys
        sys.modules["monai"] = None
        import gpuprep as gp
        assert len(gp.__all__) > 50 and gp.Compose and gp.SegmentBrain  # loads every module of the API
        from gpuprep.cli.main import main
        try:
            main(["--help"])
        except SystemExit as exit_:
            assert exit_.code == 0, exit_.code
        assert not any(name.startswith("monai") and sys.modules[name] for name in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "usage: gpuprep" in result.stdout and "segment" in result.stdout and "demo" in result.stdout
