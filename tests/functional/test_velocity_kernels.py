"""The numba composition of displacement fields against grid_sample's, which it replaces on the CPU."""

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

import gpuprep.functional.velocity_field as fields
from gpuprep.functional.velocity_kernels import compose_border, compose_border_serial


def _torch_compose(outer, inner, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(fields, "_load_kernels", lambda: None)
        return fields.compose_displacements(outer, inner)


@pytest.mark.parametrize("shape", [(2, 3, 6, 7, 5), (1, 3, 1, 9, 4), (1, 3, 5, 2, 1)])
@pytest.mark.parametrize("kernel", [compose_border, compose_border_serial])
def test_the_kernel_equals_grid_sample_with_border_padding(shape, kernel, monkeypatch):
    generator = torch.Generator().manual_seed(3)
    outer = torch.randn(shape, generator=generator) * 2
    inner = torch.randn(shape, generator=generator) * 3  # many points beyond the border
    out = np.empty(shape, np.float32)
    kernel(outer.numpy(), inner.numpy(), out)
    torch.testing.assert_close(torch.from_numpy(out), _torch_compose(outer, inner, monkeypatch), atol=2e-5, rtol=0)


def test_compose_displacements_takes_the_kernel_only_without_gradients(monkeypatch):
    calls = []
    real = fields._load_kernels

    def counting():
        calls.append(1)
        return real()

    monkeypatch.setattr(fields, "_load_kernels", counting)
    outer, inner = torch.randn(1, 3, 4, 4, 4), torch.randn(1, 3, 4, 4, 4)
    fields.compose_displacements(outer, inner)
    assert calls == [1]
    outer.requires_grad_(True)
    composed = fields.compose_displacements(outer, inner)
    composed.sum().backward()  # the torch path: differentiable
    assert calls == [1] and outer.grad is not None
    fields.compose_displacements(outer.double(), inner.double())  # float64 stays on grid_sample
    assert calls == [1]


def test_integration_is_the_same_with_and_without_the_kernel(monkeypatch):
    velocity = torch.randn(1, 3, 8, 9, 10, generator=torch.Generator().manual_seed(0)) * 2
    compiled = fields.integrate_velocity(velocity, 6)
    monkeypatch.setattr(fields, "_load_kernels", lambda: None)
    torch.testing.assert_close(compiled, fields.integrate_velocity(velocity, 6), atol=1e-4, rtol=0)
