"""The notebooks run top to bottom in a real Jupyter kernel, and are stored with their pictures.

Each notebook is executed by ``nbclient`` in a fresh ``python3`` kernel (magics, display
outputs and all), from a temporary copy so that the stored notebook is never rewritten by a
test run. ``scripts/run_notebooks.py`` refreshes the stored outputs with the same function.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import nbformat
import pytest

import gpuprep

REPOSITORY = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPOSITORY / "notebooks").glob("*.ipynb"))
PICTURES = ("image/png", "image/jpeg")


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", REPOSITORY / "scripts" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pictures(notebook: nbformat.NotebookNode) -> int:
    return sum(1 for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs if any(mime in output.get("data", {}) for mime in PICTURES))


def test_every_notebook_of_the_issue_is_there():
    names = {path.stem for path in NOTEBOOKS}
    assert {"quickstart", "augmentation_gallery", "training_and_inference"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_in_a_real_kernel(path, tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # the kernel's history database, not the user's
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    stored = path.read_bytes()
    notebook = _runner().execute_notebook(copy, package_root=Path(gpuprep.__file__).resolve().parent.parent)
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert errors == []
    assert _pictures(notebook) >= 1, f"{path.name} drew no picture"
    assert path.read_bytes() == stored, f"running {path.name} in a test rewrote the stored notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_notebook_has_its_outputs_and_pictures(path):
    """Stored with outputs so that the forge renders them; refresh with scripts/run_notebooks.py."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    not_run = [index for index, cell in enumerate(code) if cell.execution_count is None]
    assert not_run == [], f"{path.name}: code cells {not_run} have no stored outputs"
    assert [index for index, cell in enumerate(code) if cell.execution_count != index + 1] == [], (
        f"{path.name} was not stored from one top-to-bottom run")
    assert not any(output.output_type == "error" for cell in code for output in cell.outputs)
    assert _pictures(notebook) >= 1, f"{path.name} is stored without its pictures"
    assert path.stat().st_size <= _runner().MAX_STORED_BYTES, f"{path.name} is too large to store"
