"""Similarity metrics against NumPy references (formulas, brute-force windows, Parzen-window loops) and properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, uniform_filter

from gpuprep.errors import ConfigError
from gpuprep.functional.similarity import (
    joint_histogram,
    local_normalized_cross_correlation,
    mean_squared_error,
    mutual_information,
    normalized_cross_correlation,
)

METRICS = {
    "mse": mean_squared_error,
    "ncc": normalized_cross_correlation,
    "lncc": lambda f, m, mask=None: local_normalized_cross_correlation(f, m, window=5, mask=mask),
    "mi": lambda f, m, mask=None: mutual_information(f, m, bins=16, mask=mask),
}


def _smooth(shape=(12, 14, 10), seed=0, sigma=2.0) -> np.ndarray:
    """A smooth random volume in [0, 1] (float64)."""
    volume = gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return (volume - volume.min()) / (volume.max() - volume.min())


def _pair(seed=0, shape=(12, 14, 10)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed image, a related moving image (nonlinear intensity change plus noise) and a blob mask."""
    fixed = _smooth(shape, seed)
    moving = np.sqrt(fixed) + 0.1 * np.random.default_rng(seed + 1).normal(size=shape)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    return fixed, moving, (grid**2).sum(0) < 0.7


def _t(array, device, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array), dtype=dtype, device=device)[None, None]


# -- NumPy references ------------------------------------------------------------------------


def _np_lncc(f, m, window, mask, eps):
    """The truncated-window statistics as box sums: zero padding, divided by the box sum of the mask."""
    w = np.ones_like(f) if mask is None else mask.astype(np.float64)

    def box(x):
        return uniform_filter(x, window, mode="constant")

    n = box(w)
    n = np.where(n > 0, n, 1.0)
    mf, mm = box(w * f) / n, box(w * m) / n
    var_f = box(w * f * f) / n - mf**2
    var_m = box(w * m * m) / n - mm**2
    cross = box(w * f * m) / n - mf * mm
    cc = cross**2 / (var_f * var_m + eps)
    return cc[w > 0].mean()


def _np_lncc_loops(f, m, window, mask, eps):
    """Brute force: every voxel's window clipped to the volume (and the mask), statistics by np.mean."""
    inside = np.ones(f.shape, bool) if mask is None else mask
    values = []
    for index in zip(*np.nonzero(inside)):
        box = tuple(slice(max(0, i - s // 2), min(n, i - s // 2 + s)) for i, s, n in zip(index, window, f.shape))
        sel = inside[box]
        wf, wm = f[box][sel], m[box][sel]
        cross = np.mean(wf * wm) - wf.mean() * wm.mean()
        values.append(cross**2 / (wf.var() * wm.var() + eps))
    return np.mean(values)


def _beta3(x: float) -> float:
    """The centred cubic B-spline."""
    x = abs(x)
    if x < 1:
        return 2.0 / 3.0 - x**2 + x**3 / 2.0
    if x < 2:
        return (2.0 - x) ** 3 / 6.0
    return 0.0


def _np_joint(f, m, bins, mask=None, fixed_range=None, moving_range=None):
    """Mattes' Parzen joint histogram, one voxel and one bin at a time (box kernel fixed, cubic moving)."""
    sel = np.ones(f.shape, bool) if mask is None else mask
    f, m = f[sel], m[sel]
    lo_f, hi_f = fixed_range if fixed_range is not None else (f.min(), f.max())
    lo_m, hi_m = moving_range if moving_range is not None else (m.min(), m.max())
    joint = np.zeros((bins, bins))
    for vf, vm in zip(f, m):
        tf = 1 + (bins - 3) * (min(max(vf, lo_f), hi_f) - lo_f) / (hi_f - lo_f)
        tm = 1 + (bins - 3) * (min(max(vm, lo_m), hi_m) - lo_m) / (hi_m - lo_m)
        k = int(np.floor(tf + 0.5))
        for j in range(bins):
            joint[k, j] += _beta3(j - tm)
    return joint


def _np_mi(joint):
    p = joint / joint.sum()
    outer = np.outer(p.sum(1), p.sum(0))
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / outer[nz])).sum())


# -- MSE, NCC ----------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_mse_and_ncc_match_numpy(masked, device):
    fixed, moving, mask = _pair()
    sel = mask if masked else np.ones(mask.shape, bool)
    m = _t(mask, device, torch.bool) if masked else None
    mse = mean_squared_error(_t(fixed, device), _t(moving, device), m)
    ncc = normalized_cross_correlation(_t(fixed, device), _t(moving, device), m)
    assert mse.shape == ncc.shape == (1,) and mse.dtype == ncc.dtype == torch.float64
    assert mse.item() == pytest.approx(((fixed - moving) ** 2)[sel].mean(), rel=1e-12)
    assert ncc.item() == pytest.approx(np.corrcoef(fixed[sel], moving[sel])[0, 1], rel=1e-12)
    # float32 inputs, a 0/1 float mask
    m32 = _t(mask, device, torch.float32) if masked else None
    ncc32 = normalized_cross_correlation(_t(fixed, device, torch.float32), _t(moving, device, torch.float32), m32)
    assert ncc32.dtype == torch.float32 and ncc32.item() == pytest.approx(ncc.item(), abs=1e-6)


def test_ncc_is_affine_invariant_and_zero_for_a_constant_image(device):
    fixed, moving, _ = _pair()
    f, m = _t(fixed, device), _t(moving, device)
    assert normalized_cross_correlation(f, 3 * f + 7).item() == pytest.approx(1.0)
    assert normalized_cross_correlation(f, -2 * f).item() == pytest.approx(-1.0)
    assert normalized_cross_correlation(torch.zeros_like(f), m).item() == 0.0


# -- LNCC --------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [5, (3, 4, 2), 1, 30])
@pytest.mark.parametrize("masked", [False, True])
def test_lncc_matches_uniform_filter_reference(window, masked, device):
    fixed, moving, mask = _pair()
    size = (window,) * 3 if isinstance(window, int) else window
    ours = local_normalized_cross_correlation(
        _t(fixed, device), _t(moving, device), window, _t(mask, device, torch.bool) if masked else None
    )
    expected = _np_lncc(fixed, moving, size, mask if masked else None, 1e-5)
    assert ours.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_lncc_window_is_truncated_at_the_border_and_the_mask(masked):
    fixed, moving, mask = _pair(3, shape=(6, 7, 5))
    fixed, moving = 100 + 50 * fixed, 30 * moving  # far from zero: the statistics must not cancel
    m = mask if masked else None
    ours = local_normalized_cross_correlation(_t(fixed, "cpu"), _t(moving, "cpu"), (3, 4, 2), None if m is None
                                              else _t(m, "cpu", torch.bool), eps=1e-3)
    assert ours.item() == pytest.approx(_np_lncc_loops(fixed, moving, (3, 4, 2), m, 1e-3), rel=1e-9)


def test_lncc_is_one_for_an_affine_copy_and_float32_stays_accurate(device):
    fixed, moving, _ = _pair()
    f = _t(1000 + 200 * fixed, device, torch.float32)
    assert local_normalized_cross_correlation(f, 3 * f - 5, window=5, eps=1e-12).item() == pytest.approx(1, abs=1e-4)
    ours = local_normalized_cross_correlation(f, _t(moving, device, torch.float32), window=5)
    expected = _np_lncc(1000 + 200 * fixed, moving, (5, 5, 5), None, 1e-5)
    assert ours.item() == pytest.approx(expected, rel=1e-4)


# -- mutual information ------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["plain", "masked", "ranges"])
def test_joint_histogram_and_mi_match_numpy_parzen_loops(case, device):
    fixed, moving, mask = _pair(5, shape=(6, 5, 4))
    kwargs = {"mask": mask} if case == "masked" else {}
    if case == "ranges":  # narrower than the data: values outside are clamped
        kwargs = {"fixed_range": (0.1, 0.9), "moving_range": (0.2, 0.8)}
    expected = _np_joint(fixed, moving, 12, **kwargs)
    if "mask" in kwargs:
        kwargs["mask"] = _t(mask, device, torch.bool)
    joint = joint_histogram(_t(fixed, device), _t(moving, device), 12, **kwargs)
    assert joint.shape == (1, 12, 12)
    np.testing.assert_allclose(joint[0].cpu().numpy(), expected, atol=1e-12)
    assert joint.sum().item() == pytest.approx(mask.sum() if case == "masked" else fixed.size)
    mi = mutual_information(_t(fixed, device), _t(moving, device), 12, **kwargs)
    assert mi.item() == pytest.approx(_np_mi(expected), rel=1e-10)


def test_mi_of_an_image_with_itself_is_the_entropy_of_its_marginal(device):
    # four intensities far enough apart (over 4 bins) that the moving kernels do not overlap: the
    # fixed bin is a function of the moving bin, so MI = H(fixed marginal)
    labels = np.random.default_rng(2).choice(4, size=(10, 9, 8), p=[0.4, 0.3, 0.2, 0.1])
    x = _t(5.0 + 2.0 * labels, device)
    joint = joint_histogram(x, x, bins=16)[0].cpu().numpy()
    p_fixed = joint.sum(1) / joint.sum()
    entropy = -sum(p * np.log(p) for p in p_fixed if p > 0)
    frequencies = np.bincount(labels.ravel()) / labels.size
    assert entropy == pytest.approx(-(frequencies * np.log(frequencies)).sum(), rel=1e-12)
    assert mutual_information(x, x, bins=16).item() == pytest.approx(entropy, rel=1e-10)


@pytest.mark.parametrize(("scale", "offset"), [(3.0, -2.0), (-0.5, 10.0)])
def test_mi_is_invariant_to_an_affine_intensity_change(scale, offset, device):
    fixed, _, mask = _pair(shape=(16, 16, 16))
    x = _t(fixed, device)
    m = _t(mask, device, torch.bool)
    for kwargs in ({}, {"mask": m}):
        reference = mutual_information(x, x, **kwargs).item()
        assert mutual_information(x, scale * x + offset, **kwargs).item() == pytest.approx(reference, rel=1e-9)
        assert reference > 1.0


def test_mi_of_independent_noise_is_near_zero(device):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 32, 32, 32, generator=generator).to(device)
    noise = torch.randn(2, 1, 32, 32, 32, generator=generator).to(device)
    mi = mutual_information(x, noise)
    assert mi.shape == (2,) and bool((mi >= 0).all()) and bool((mi < 0.03).all())
    assert bool((mutual_information(x, x) > 2.0).all())  # against about 0.01 for the noise


# -- every metric ------------------------------------------------------------------------------


def _batch(device, dtype=torch.float32):
    pairs = [_pair(seed) for seed in (0, 10, 20)]
    fixed = torch.stack([_t(p[0], device, dtype)[0] for p in pairs])
    moving = torch.stack([_t(p[1], device, dtype)[0] for p in pairs])
    masks = torch.stack([_t(p[2], device, torch.bool)[0] for p in pairs])
    return fixed, moving, masks


@pytest.mark.parametrize("name", sorted(METRICS))
def test_a_batch_equals_its_samples_one_by_one(name, device):
    metric = METRICS[name]
    fixed, moving, masks = _batch(device)
    for mask in (None, masks):
        batch = metric(fixed, moving, mask=mask)
        singles = torch.cat([metric(fixed[i : i + 1], moving[i : i + 1], mask=None if mask is None else mask[i : i + 1])
                             for i in range(3)])
        assert batch.shape == (3,) and batch.dtype == torch.float32
        torch.testing.assert_close(batch, singles, rtol=1e-5, atol=1e-6)
    # one template against the whole batch
    template = metric(fixed[:1], moving)
    torch.testing.assert_close(template, torch.cat([metric(fixed[:1], moving[i : i + 1]) for i in range(3)]))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_gradients_flow_to_moving(name, device):
    fixed, moving, masks = _batch(device)
    moving = moving.clone().requires_grad_(True)
    METRICS[name](fixed, moving, mask=masks).sum().backward()
    grad = moving.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and grad.abs().sum().item() > 0
    assert grad[~masks].abs().max().item() == 0.0  # voxels outside the mask play no part (nor in LNCC's windows)


@pytest.mark.parametrize("name", ["ncc", "lncc", "mi"])
def test_gradients_match_finite_differences(name):
    fixed, moving, mask = (t[:2, :, :6, :5, :4].contiguous() for t in _batch("cpu", torch.float64))
    moving = moving.clone().requires_grad_(True)
    functions = {
        "ncc": lambda m: normalized_cross_correlation(fixed, m, mask),
        "lncc": lambda m: local_normalized_cross_correlation(fixed, m, (3, 2, 3), mask, eps=1e-3),
        # given ranges: the default ones follow the data, and are constants for autograd
        "mi": lambda m: mutual_information(fixed, m, 8, mask, fixed_range=(0.0, 1.0), moving_range=(-0.5, 1.5)),
    }
    assert torch.autograd.gradcheck(functions[name], (moving,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_a_shift_of_the_moving_image_worsens_the_metric(name, device):
    image = _t(_smooth((24, 24, 24), seed=7, sigma=2.5), device, torch.float32)
    metric = METRICS[name]
    aligned = metric(image, image)
    for shift in (1, 3):
        shifted = metric(image, torch.roll(image, shift, dims=3))
        assert (shifted > aligned).item() if name == "mse" else (shifted < aligned).item()


def test_empty_mask_gives_nan_and_constant_images_are_handled(device):
    fixed, moving, _ = _batch(device)
    empty = torch.zeros_like(fixed, dtype=torch.bool)
    for metric in METRICS.values():
        assert bool(torch.isnan(metric(fixed, moving, mask=empty)).all())
    constant = torch.full_like(fixed, 3.0)
    assert mutual_information(constant, moving).abs().max().item() < 1e-12
    assert local_normalized_cross_correlation(constant, moving).abs().max().item() < 1e-5


def test_no_host_synchronisation(forbid_host_sync, device):
    fixed, moving, masks = _batch(device)
    forbid_host_sync()
    for metric in METRICS.values():
        metric(fixed, moving, mask=masks)


def test_invalid_arguments_are_rejected():
    x = torch.rand(1, 1, 4, 4, 4)
    with pytest.raises(ConfigError, match="window"):
        local_normalized_cross_correlation(x, x, window=0)
    with pytest.raises(ValueError, match="eps"):
        local_normalized_cross_correlation(x, x, eps=0.0)
    with pytest.raises(ValueError, match=r"\[B, C, D, H, W\]"):
        local_normalized_cross_correlation(x[0], x[0])
    with pytest.raises(ConfigError, match="bins"):
        mutual_information(x, x, bins=3)
    with pytest.raises(ValueError, match="moving_range"):
        mutual_information(x, x, moving_range=1.0)
    with pytest.raises(ValueError, match="broadcast"):
        mean_squared_error(x, torch.rand(1, 1, 4, 4, 5))
    with pytest.raises(ValueError, match="mask"):
        normalized_cross_correlation(x, x, mask=torch.ones(2, 1, 1, 1, 1))
    with pytest.raises(TypeError):
        mean_squared_error(x.numpy(), x)
