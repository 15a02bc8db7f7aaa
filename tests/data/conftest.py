"""Fixtures of the data tests: the input files of the MONAI and TorchIO round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.world_positions import geometry_files, real_files


@pytest.fixture(params=["las", "lps", "oblique", *real_files()])
def source(request, tmp_path) -> Path:
    """One input file: synthetic LAS/LPS/oblique written by nibabel, or a real scan."""
    files = {**geometry_files(tmp_path), **real_files()}
    return files[request.param]
