"""Fixtures shared by the functional tests."""

import pytest

from gpuprep.functional import flood as F


@pytest.fixture(params=["compiled", "torch"])
def flood_path(request, monkeypatch):
    """Fill holes and keep the largest component by the numba kernels (CPU, numba installed), then by torch."""
    if request.param == "torch":
        monkeypatch.setattr(F, "_load_kernels", lambda: None)
    elif F._load_kernels() is None:
        pytest.skip("numba is not installed: the torch path is the only one")
    return request.param
