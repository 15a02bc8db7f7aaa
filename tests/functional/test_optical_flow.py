"""TV-L1 optical flow against ``skimage.registration.optical_flow_tvl1``, on known motions, in batches and on CUDA."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
from skimage.registration import optical_flow_tvl1 as skimage_tvl1

import gpuprep.functional.optical_flow as optical_flow
from gpuprep.functional.optical_flow import optical_flow_tvl1

#: The largest difference from scikit-image's flow, in voxels: float32 rounding (scipy interpolates
#: and filters in double precision) grows through the iterations; about 1e-4 is typical.
FLOAT32_TOLERANCE = 1e-3
#: In float64 both compute the same steps, so only rounding is left.
FLOAT64_TOLERANCE = 1e-9


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run on one thread: these volumes are too small to gain from two, and on a shared 2-core machine every
    one of the solver's thousands of small parallel ops waits at an OpenMP barrier (5-10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(shape, shift=(0.0, 0.0, 0.0), field=None, seed=0) -> np.ndarray:
    """A few Gaussian blobs, moved by ``shift`` and (if given) by ``field(grid)``, sampled analytically."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    points = grid - np.asarray(shift, dtype=np.float64).reshape(3, 1, 1, 1)
    if field is not None:
        points = points - field(grid)
    volume = np.zeros(shape)
    for _ in range(6):
        centre = rng.uniform(0.3, 0.7, 3) * np.asarray(shape)
        sigma = rng.uniform(2.5, 4.5)
        squared = ((points - centre.reshape(3, 1, 1, 1)) ** 2).sum(0)
        volume += rng.uniform(0.5, 1.0) * np.exp(-squared / (2 * sigma * sigma))
    return volume.astype(np.float32)


def _wave(grid: np.ndarray) -> np.ndarray:
    """A smooth displacement of up to 1.5 voxels, different along each axis."""
    shape = grid.shape[1:]
    return np.stack([1.5 * np.sin(2 * np.pi * grid[(a + 1) % 3] / shape[(a + 1) % 3] + a) for a in range(3)])


def _pair(shape, seed=0) -> tuple[np.ndarray, np.ndarray]:
    return _blobs(shape, seed=seed), _blobs(shape, field=_wave, seed=seed)


@pytest.mark.parametrize(
    ("shape", "options"),
    [
        ((33, 36, 35), {}),  # two pyramid levels, odd sides
        ((34, 36, 40), {"prefilter": True}),
        ((34, 36, 40), {"attachment": 5.0, "tightness": 0.5, "num_warp": 3, "num_iter": 7, "tol": 1e-3}),
    ],
)
def test_matches_skimage_in_float32(shape, options):
    reference, moving = _pair(shape)
    expected = skimage_tvl1(reference, moving, **options)
    flow = optical_flow_tvl1(torch.from_numpy(reference), torch.from_numpy(moving), **options)
    assert flow.shape == (3, *shape) and flow.dtype == torch.float32
    assert np.abs(expected).max() > 1.0  # a real motion, not a trivial one
    np.testing.assert_allclose(flow.numpy(), expected, rtol=0, atol=FLOAT32_TOLERANCE)


def test_matches_skimage_in_float64_to_rounding():
    reference, moving = _pair((24, 26, 28))
    options: dict[str, Any] = {"attachment": 10.0, "tightness": 0.2, "num_warp": 4, "num_iter": 6, "prefilter": True}
    expected = skimage_tvl1(reference.astype(np.float64), moving.astype(np.float64), dtype=np.float64, **options)
    inputs = (torch.from_numpy(reference), torch.from_numpy(moving))
    kept = [x.clone() for x in inputs]
    flow = optical_flow_tvl1(*inputs, dtype=torch.float64, **options)
    assert flow.dtype == torch.float64
    np.testing.assert_allclose(flow.numpy(), expected, rtol=0, atol=FLOAT64_TOLERANCE)
    assert all(torch.equal(x, y) for x, y in zip(inputs, kept))  # the inputs are not modified


def test_recovers_a_known_translation(device):
    """Independent of scikit-image: blobs moved by t give a flow of about t where the volume has edges."""
    shape = (36, 36, 36)
    shift = np.array([0.5, -1.0, 1.5])
    reference, moving = _blobs(shape), _blobs(shape, shift=shift)
    flow = optical_flow_tvl1(torch.from_numpy(reference).to(device), torch.from_numpy(moving).to(device))
    assert flow.device.type == device.type
    edges = np.linalg.norm(np.gradient(reference), axis=0)
    where = edges > 0.3 * edges.max()
    found = flow.cpu().numpy()[:, where]
    np.testing.assert_allclose(np.median(found, axis=1), shift, atol=0.1)
    assert np.abs(found - shift[:, None]).mean() < 0.1


@pytest.mark.parametrize("prefilter", [False, True])
def test_a_batch_equals_its_pairs_each_stopping_on_its_own(prefilter, monkeypatch):
    """Pairs moved by more need more warps to meet ``tol``: in a batch each stops as when alone, and as skimage."""
    shape = (24, 26, 28)
    reference = _blobs(shape)
    movings = [_blobs(shape, field=lambda grid, a=amplitude: a * _wave(grid)) for amplitude in (0.2, 0.4, 1.0)]
    options: dict[str, Any] = {"tol": 0.03, "prefilter": prefilter}
    warps: list[int] = []
    counted = optical_flow._warp_edge

    def counting(*args):
        warps.append(1)
        return counted(*args)

    monkeypatch.setattr(optical_flow, "_warp_edge", counting)
    singles, counts = [], []
    for moving in movings:
        warps.clear()
        singles.append(optical_flow_tvl1(torch.from_numpy(reference), torch.from_numpy(moving), **options))
        counts.append(len(warps))
        expected = skimage_tvl1(reference, moving, **options)
        np.testing.assert_allclose(singles[-1].numpy(), expected, rtol=0, atol=FLOAT32_TOLERANCE)
    assert len(set(counts)) == 3, counts  # the pairs stop after different numbers of warps
    batch = optical_flow_tvl1(
        torch.from_numpy(np.stack([reference] * 3)), torch.from_numpy(np.stack(movings)), **options
    )
    assert batch.shape == (3, 3, *shape)
    for flow, single in zip(batch, singles):
        torch.testing.assert_close(flow, single, rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    reference, moving = _pair((34, 36, 40))
    inputs = torch.from_numpy(np.stack([reference, moving])), torch.from_numpy(np.stack([moving, reference]))
    on_cpu = optical_flow_tvl1(*inputs, prefilter=True)
    on_cuda = optical_flow_tvl1(*(x.cuda() for x in inputs), prefilter=True)
    assert on_cuda.is_cuda
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=0, atol=FLOAT32_TOLERANCE)


def test_bad_volumes_are_refused_with_the_argument_and_the_value():
    volume = torch.zeros(8, 8, 8)
    with pytest.raises(ValueError, match=r"same shape, got \(8, 8, 8\) and \(8, 8, 9\)"):
        optical_flow_tvl1(volume, torch.zeros(8, 8, 9))
    with pytest.raises(ValueError, match=r"reference_image must be a volume \[D, H, W\].*got shape \(8, 8\)"):
        optical_flow_tvl1(torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match=r"got shape \(1, 1, 8, 8, 8\)"):
        optical_flow_tvl1(volume[None, None], volume[None, None])
    with pytest.raises(ValueError, match=r"at least 2 voxels, got shape \(8, 1, 8\)"):
        optical_flow_tvl1(torch.zeros(8, 1, 8), torch.zeros(8, 1, 8))
    with pytest.raises(ValueError, match=r"moving_image must be floating point.*torch\.int16"):
        optical_flow_tvl1(volume, volume.to(torch.int16))
    with pytest.raises(ValueError, match=r"reference_image must be a torch\.Tensor, got ndarray"):
        optical_flow_tvl1(volume.numpy(), volume)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"dtype must be torch\.float32 or torch\.float64, got torch\.float16"):
        optical_flow_tvl1(volume, volume, dtype=torch.float16)


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("attachment", 0, "a finite number > 0"),
        ("attachment", float("nan"), "a finite number > 0"),
        ("tightness", -0.3, "a finite number > 0"),
        ("num_warp", 0, "an integer >= 1"),
        ("num_iter", 2.5, "an integer >= 1"),
        ("num_iter", True, "an integer >= 1"),
        ("tol", -1e-4, "a finite number >= 0"),
        ("prefilter", "yes", "True or False"),
    ],
)
def test_bad_parameters_are_refused(name, value, rule):
    volume = torch.zeros(8, 8, 8)
    with pytest.raises(ValueError, match=re.escape(f"{name} must be {rule}, got {value!r}")):
        optical_flow_tvl1(volume, volume, **{name: value})
