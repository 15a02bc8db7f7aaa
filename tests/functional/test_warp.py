"""Warping through displacement fields: the inverse field against scipy."""

from __future__ import annotations

import functools

import numpy as np
import scipy.ndimage as ndi
import torch


def test_inverse_displacement_against_scipy():
    """The inverse field v satisfies v(y) + u(y + v(y)) = 0, checked with scipy's interpolation of u."""
    from gpuprep.functional.elastic import bspline_field
    from gpuprep.functional.warp import invert_displacement

    shape = (40, 36, 32)
    coefficients = torch.from_numpy(np.random.default_rng(3).uniform(-3, 3, (1, 3, 6, 6, 6))).float()
    u = bspline_field(coefficients, shape)
    points = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(np.float64)
    u64 = u[0].double().numpy()
    # This field bends hard (3 voxels over 13-voxel cells): solved on every voxel it is exact; on
    # the 2x coarser grid (used for larger volumes) trilinear interpolation costs < 0.1 voxel.
    for stride, bound in ((1, 1e-4), (2, 0.1)):
        v = invert_displacement(u, stride=stride)[0].double().numpy()
        u_at = np.stack([ndi.map_coordinates(u64[c], points + v, order=1, mode="nearest") for c in range(3)])
        residual = np.abs(v + u_at)
        assert residual.max() < bound and residual.mean() < bound / 10, (stride, residual.max())
    assert np.abs(u64).max() > 1  # a real deformation


def _warp_case(seed: int, batch: int = 2):
    from gpuprep.functional.elastic import bspline_rows, bspline_taps

    rng = np.random.default_rng(seed)
    in_shape, out_shape = (11, 9, 10), (12, 10, 9)
    pre = np.stack([np.eye(4) for _ in range(batch)])
    for m in pre:
        angle = rng.uniform(-0.4, 0.4)
        m[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        m[:3, :3] *= rng.uniform(0.9, 1.1)
        m[:3, 3] = (np.array(in_shape) - 1) / 2 - m[:3, :3] @ ((np.array(out_shape) - 1) / 2) + rng.uniform(-1, 1, 3)
    coefficients = torch.from_numpy(rng.uniform(-2, 2, (batch, 3, 5, 5, 6))).float()
    separable = (bspline_rows(coefficients, out_shape), *bspline_taps(out_shape[2], 6))
    image = torch.from_numpy(rng.normal(size=(batch, 2, *in_shape))).float()
    labels = torch.from_numpy(rng.integers(0, 6, (batch, 1, *in_shape))).to(torch.int16)
    return image, labels, pre, separable, out_shape


def test_the_dense_field_is_its_separable_form():
    """bspline_field (the torch path's field) against an explicit sum over every control point."""
    from gpuprep.functional.elastic import bspline_basis, bspline_field, bspline_rows, bspline_taps, rows_to_field

    coefficients = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 3, 5, 6, 7)))
    shape = (9, 8, 11)
    basis = [bspline_basis(n, m) for n, m in zip(shape, coefficients.shape[2:])]
    expected = np.einsum("bcijk,di,hj,wk->bcdhw", coefficients.numpy(), *basis)
    np.testing.assert_allclose(bspline_field(coefficients, shape).numpy(), expected, rtol=0, atol=1e-12)
    rows = bspline_rows(coefficients, shape)
    assert torch.equal(rows_to_field(rows, *bspline_taps(11, 7)), bspline_field(coefficients, shape))


def test_the_warp_kernel_equals_the_grid_sample_path():
    """Labels bit for bit, images to float rounding: an image with its labels in one pass, or each alone."""
    import pytest

    pytest.importorskip("numba")
    from gpuprep.functional.elastic import rows_to_field
    from gpuprep.functional.warp import warp, warp_image_and_labels

    eye = np.stack([np.eye(4)] * 2)
    for seed in range(4):
        image, labels, pre, separable, out_shape = _warp_case(seed)
        field = rows_to_field(*separable)
        for padding_mode in ("zeros", "border"):
            reference = [warp(image, pre, field, eye, out_shape, "linear", padding_mode),
                         warp(labels, pre, field, eye, out_shape, "nearest", padding_mode)]
            pair = warp_image_and_labels(image, labels, pre, *separable, eye, out_shape, padding_mode)
            alone = [warp_image_and_labels(image, None, pre, *separable, eye, out_shape, padding_mode)[0],
                     warp_image_and_labels(None, labels, pre, *separable, eye, out_shape, padding_mode)[1]]
            for ours in (pair, alone):
                torch.testing.assert_close(ours[0], reference[0], rtol=0, atol=1e-5)
                assert torch.equal(ours[1], reference[1])
            assert pair[0] is not None and pair[0].shape == reference[0].shape


def test_the_warp_kernel_declines_where_it_would_differ():
    import pytest

    pytest.importorskip("numba")
    from gpuprep.functional.warp import warp_image_and_labels

    image, labels, pre, (rows, first, taps), out_shape = _warp_case(5)
    eye = np.stack([np.eye(4)] * 2)
    shifted = eye.copy()
    shifted[:, 0, 3] = 0.5  # a step after the warp: the field is read at other points
    assert warp_image_and_labels(image, labels, pre, rows, first, taps, shifted, out_shape) is None
    assert warp_image_and_labels(image.double(), labels, pre, rows, first, taps, eye, out_shape) is None
    assert warp_image_and_labels(image, labels.float(), pre, rows, first, taps, eye, out_shape) is None
    assert warp_image_and_labels(image, labels, pre, rows[:, :, 1:], first, taps, eye, out_shape) is None
    assert warp_image_and_labels(None, None, pre, rows, first, taps, eye, out_shape) is None


def test_one_hot_labels_through_the_warp_kernel_equal_resample_labels():
    import pytest

    pytest.importorskip("numba")
    from gpuprep.functional.elastic import rows_to_field
    from gpuprep.functional.resample import resample_labels
    from gpuprep.functional.warp import warp, warp_image_and_labels

    eye = np.stack([np.eye(4)] * 2)
    for seed in range(3):
        image, labels, pre, separable, out_shape = _warp_case(seed)
        field = rows_to_field(*separable)
        for padding_mode in ("zeros", "border"):
            _, ours = warp_image_and_labels(image, labels, pre, *separable, eye, out_shape, padding_mode, onehot=True)
            sampler = functools.partial(warp, pre_maps=pre, field=field, post_maps=eye, out_shape=out_shape,
                                        mode="linear", padding_mode=padding_mode)
            expected = resample_labels(labels, pre, out_shape, "linear", padding_mode, sampler=sampler)
            assert torch.equal(ours, expected)
