"""Execute the notebooks in ``notebooks/`` in a fresh Jupyter kernel each and store their outputs.

The stored outputs (text and pictures) are what the forge renders, so refresh them with this
script whenever a notebook or the behaviour it shows changes::

    python scripts/run_notebooks.py                      # all notebooks, in place
    python scripts/run_notebooks.py quickstart           # only notebooks/quickstart.ipynb

The kernel is the ``python3`` kernel of the running interpreter, started in ``notebooks/`` with
this checkout's ``gpuprep`` first on ``PYTHONPATH``. Every cell has ``TIMEOUT_S`` seconds; the
first error stops the notebook and leaves the stored file untouched. ``tests/test_notebooks.py``
runs the same :func:`execute_notebook` on temporary copies.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPOSITORY = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPOSITORY / "notebooks"
TIMEOUT_S = 120
MAX_STORED_BYTES = 400_000  # stored notebooks stay small enough to review and to render on the forge


def execute_notebook(path: Path, package_root: Path = REPOSITORY) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` in a new kernel and return it with its outputs.

    Parameters
    ----------
    path:
        The ``.ipynb`` file; it is read, not written. The kernel's working folder is its folder.
    package_root:
        The folder holding the ``gpuprep`` package the kernel must import (put first on
        ``PYTHONPATH``, so a checkout is used rather than another installed copy).

    Raises ``nbclient.exceptions.CellExecutionError`` (naming the cell and the error) when a cell
    fails, and ``nbclient.exceptions.CellTimeoutError`` when one runs past ``TIMEOUT_S``.
    """
    notebook = nbformat.read(path, as_version=4)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_root), env.get("PYTHONPATH", "")) if p)
    client = NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    return notebook


def main(argv: list[str] | None = None) -> int:
    """Re-execute the named notebooks (default: all) in place; print the time and size of each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all in notebooks/)")
    args = parser.parse_args(argv)
    paths = [NOTEBOOKS / f"{name}.ipynb" for name in args.names] or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        notebook = execute_notebook(path)
        temporary = path.with_suffix(".ipynb.tmp")
        nbformat.write(notebook, temporary)
        os.replace(temporary, path)
        size = path.stat().st_size
        print(f"{path.name}: {time.perf_counter() - start:.1f} s, {size / 1000:.0f} kB")
        if size > MAX_STORED_BYTES:
            print(f"  larger than {MAX_STORED_BYTES / 1000:.0f} kB: make its pictures smaller", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
