"""Shared fixtures: the device list (CPU, plus CUDA when present) and small test volumes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every test that takes ``device`` runs on the CPU and, when available, on CUDA."""
    return torch.device(request.param)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, to check that inputs are never modified."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def oblique_affine(spacing=(1.2, 0.9, 2.5), angles=(0.3, -0.2, 0.5), origin=(-90.0, 12.5, -70.0)) -> np.ndarray:
    """A rotated, anisotropic voxel-to-world affine (no axis aligned with the world)."""
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.fixture
def forbid_host_sync(monkeypatch):
    """Make ``.item/.cpu/.numpy/.tolist`` raise on volumes (ndim >= 4) until the test ends.

    Metadata (affines, small parameter tensors) stays on the CPU by design and may be read; volume
    data must never be pulled to the host by a transform. Call the fixture's value to arm it.
    """

    def guard(name):
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, **kwargs):
            if self.ndim >= 4:
                raise AssertionError(f"Tensor.{name} called on a volume of shape {tuple(self.shape)}")
            return original(self, *args, **kwargs)

        return guarded

    def arm():
        for name in ("item", "cpu", "numpy", "tolist"):
            monkeypatch.setattr(torch.Tensor, name, guard(name))

    return arm
