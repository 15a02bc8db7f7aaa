"""The fused sampler against the torch path it replaces: labels bit for bit, images to 1e-5 (float32 rounding)."""

from __future__ import annotations

import functools
import multiprocessing
import sys
import threading

import numpy as np
import pytest
import torch

from gpuprep.functional import fused_sampler
from gpuprep.functional.boundary import fill_tensor
from gpuprep.functional.fused_sampler import _torch_affine, backend, numba_ready, sample_affine
from gpuprep.functional.resample import resample

pytest.importorskip("numba")


def _random_map(rng, in_shape, out_shape, scale=0.2, shear=0.1) -> np.ndarray:
    """A random rotation (up to 0.5 rad per axis), scaling and shear about the centres, plus a shift."""
    angles = rng.uniform(-0.5, 0.5, 3)
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        turn = np.eye(3)
        turn[[i, i, j, j], [i, j, i, j]] = [c, -s, s, c]
        rotation = rotation @ turn
    linear = rotation @ np.diag(rng.uniform(1 - scale, 1 + scale, 3)) + rng.uniform(-shear, shear, (3, 3))
    voxel_map = np.eye(4)
    voxel_map[:3, :3] = linear
    centre_in, centre_out = (np.array(in_shape) - 1) / 2, (np.array(out_shape) - 1) / 2
    voxel_map[:3, 3] = centre_in - linear @ centre_out + rng.uniform(-2, 2, 3)
    return voxel_map


def _case(seed, batch, dtype, channels=2):
    rng = np.random.default_rng(seed)
    in_shape, out_shape = tuple(rng.integers(5, 14, 3)), tuple(rng.integers(5, 14, 3))
    maps = np.stack([_random_map(rng, in_shape, out_shape) for _ in range(batch)])
    if dtype.is_floating_point:
        volume = torch.from_numpy(rng.normal(size=(batch, channels, *in_shape))).to(dtype)
    else:
        volume = torch.from_numpy(rng.integers(0, 120, (batch, channels, *in_shape))).to(dtype)
    return volume, maps, out_shape


def _assert_same(ours, theirs):
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    if ours.is_floating_point():
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    else:
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8, torch.int16])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_equals_the_torch_path(batch, dtype, padding_mode):
    """Random rotations, scalings and shears per sample; both modes on images, nearest on labels."""
    assert backend("cpu") == "numba"
    for seed in range(3):
        volume, maps, out_shape = _case(seed + 10 * batch, batch, dtype)
        for mode in ("linear", "nearest") if dtype.is_floating_point else ("nearest",):
            ours = sample_affine(volume, maps, out_shape, mode=mode, padding_mode=padding_mode)
            _assert_same(ours, _torch_affine(volume, maps, out_shape, mode, padding_mode, None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16])
@pytest.mark.parametrize("per_sample", [False, True])
def test_fill_beyond_half_a_voxel(dtype, per_sample):
    volume, maps, out_shape = _case(5, 2, dtype)
    fill = torch.tensor([[3.0, -2.0], [7.0, 1.5]]).reshape(2, 2, 1, 1, 1) if per_sample else 4.0
    modes = ("linear", "nearest") if dtype.is_floating_point else ("nearest",)
    for mode in modes:
        ours = sample_affine(volume, maps, out_shape, mode=mode, padding_mode="zeros", fill=fill)
        _assert_same(ours, _torch_affine(volume, maps, out_shape, mode, "zeros", fill_tensor(volume, fill)))
        _assert_same(ours, resample(volume, maps, out_shape, mode, padding_mode="zeros", padding_value=fill))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_exact_ties_round_like_the_path_they_replace(dtype):
    """Scaling by 1.5 puts every other source point midway between voxels: batched maps round ties
    to even (grid_sample), a single map rounds them up (nearest_general)."""
    volume = torch.arange(2 * 9 * 10 * 11).reshape(2, 1, 9, 10, 11).to(dtype)
    maps = np.stack([np.diag([1.5, 1.5, 1.5, 1.0]), np.diag([0.5, 1.5, 1.5, 1.0])])
    maps[:, 0, 1] = 0.25  # a shear, so the maps are general
    for chosen in (maps, maps[:1].repeat(2, 0)):
        for padding_mode in ("zeros", "border"):
            ours = sample_affine(volume, chosen, (7, 7, 7), mode="nearest", padding_mode=padding_mode)
            _assert_same(ours, _torch_affine(volume, chosen, (7, 7, 7), "nearest", padding_mode, None))


def test_batch_equals_singles():
    volume, maps, out_shape = _case(7, 3, torch.float32)
    batched = sample_affine(volume, maps, out_shape, mode="linear", padding_mode="zeros")
    labels = volume.round().to(torch.int32)  # int32 labels: one map at a time in both paths
    batched_labels = sample_affine(labels, maps, out_shape, mode="nearest", padding_mode="zeros")
    for index in range(3):
        single = sample_affine(volume[index : index + 1], maps[index : index + 1], out_shape, mode="linear",
                               padding_mode="zeros")
        torch.testing.assert_close(batched[index : index + 1], single, rtol=0, atol=1e-6)
        single_labels = sample_affine(labels[index : index + 1], maps[index : index + 1], out_shape, mode="nearest",
                                      padding_mode="zeros")
        assert torch.equal(batched_labels[index : index + 1], single_labels)


@pytest.mark.parametrize("batch", [1, 3])
def test_resample_gives_the_same_results_without_numba(batch, monkeypatch):
    """``resample`` with the kernel (batched and single maps) against ``resample`` where numba is missing."""
    volume, maps, out_shape = _case(3, batch, torch.float32)
    labels = (volume * 40).round().clamp(-100, 100).to(torch.int16)
    calls = [(volume, "linear"), (volume, "nearest"), (labels, "nearest")]
    with_kernel = [resample(v, maps, out_shape, mode, anti_aliasing=True) for v, mode in calls]
    with_kernel += [resample(v, maps[0], out_shape, mode, padding_mode="border") for v, mode in calls]
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.setitem(sys.modules, "gpuprep.functional.fused_kernels", None)
    fused_sampler._kernels.cache_clear()
    try:
        assert backend("cpu") == "torch" and not numba_ready(volume)
        without = [resample(v, maps, out_shape, mode, anti_aliasing=True) for v, mode in calls]
        without += [resample(v, maps[0], out_shape, mode, padding_mode="border") for v, mode in calls]
        assert sample_affine(volume, maps, out_shape, mode="linear", padding_mode="zeros").shape[2:] == out_shape
    finally:
        fused_sampler._kernels.cache_clear()
    for ours, theirs in zip(with_kernel, without):
        _assert_same(ours, theirs)


def test_dispatch(monkeypatch):
    assert backend("cpu") == "numba" and backend("meta") == "torch"
    volume, maps, out_shape = _case(4, 2, torch.float32)
    assert not numba_ready(volume.requires_grad_())  # autograd stays on the torch path
    reference = _torch_affine(volume, maps, out_shape, "linear", "zeros", None)
    assert reference.requires_grad
    # CUDA with triton but without the triton module: the torch path.
    monkeypatch.setattr(fused_sampler, "backend", lambda device: "triton")
    monkeypatch.setitem(sys.modules, "gpuprep.functional.fused_sampler_triton", None)
    out = sample_affine(volume, maps, out_shape, mode="linear", padding_mode="zeros")
    torch.testing.assert_close(out, reference)


def test_bad_arguments():
    volume, maps, out_shape = _case(0, 1, torch.uint8)
    with pytest.raises(TypeError, match="nearest"):
        sample_affine(volume, maps, out_shape, mode="linear", padding_mode="zeros")
    with pytest.raises(ValueError, match="mode"):
        sample_affine(volume.float(), maps, out_shape, mode="cubic", padding_mode="zeros")
    with pytest.raises(ValueError, match="padding_mode"):
        sample_affine(volume.float(), maps, out_shape, mode="linear", padding_mode="reflection")
    with pytest.raises(ValueError, match="one"):
        sample_affine(volume.float(), np.concatenate([maps, maps]), out_shape, mode="linear", padding_mode="zeros")


def _sample_in_child(queue):
    volume, maps, out_shape = _case(2, 2, torch.float32)
    torch.set_num_threads(2)
    queue.put(sample_affine(volume, maps, out_shape, mode="linear", padding_mode="zeros").sum().item())


def test_serial_kernels_in_threads_and_forked_processes():
    """One thread, other threads and forked children (DataLoader workers) use the kernels compiled without
    threads: GNU OpenMP, numba's pool here, aborts a child forked after the parent used it."""
    volume, maps, out_shape = _case(2, 2, torch.float32)
    parallel = sample_affine(volume, maps, out_shape, mode="linear", padding_mode="zeros")  # starts the pool
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(sample_affine(volume, maps, out_shape, mode="linear", padding_mode="zeros"), parallel)
    finally:
        torch.set_num_threads(threads)
    results = []
    worker = threading.Thread(target=lambda: results.append(
        sample_affine(volume, maps, out_shape, mode="linear", padding_mode="zeros")))
    worker.start()
    worker.join()
    assert torch.equal(results[0], parallel)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_sample_in_child, args=(queue,))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0 and queue.get(timeout=5) == pytest.approx(parallel.sum().item())


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int16, torch.bool])
def test_image_and_labels_in_one_pass_equal_two_passes(padding_mode, label_dtype):
    for seed in range(4):
        volume, maps, out_shape = _case(seed, 3, torch.float32)
        labels = (volume[:, :1] * 3).round().clamp(0, 5).to(label_dtype)
        labels = torch.cat([labels, labels.flip(2)], dim=1)  # two label channels
        image, label = fused_sampler.sample_grid_rule_with_labels(volume, labels, maps, out_shape, padding_mode)
        assert torch.equal(image, fused_sampler.sample_grid_rule(volume, maps, out_shape, "linear", padding_mode))
        assert torch.equal(label, fused_sampler.sample_grid_rule(labels, maps, out_shape, "nearest", padding_mode))
    with pytest.raises(TypeError, match="float32 volume and integer labels"):
        fused_sampler.sample_grid_rule_with_labels(volume.double(), labels, maps, out_shape, padding_mode)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int16])
def test_one_hot_labels_in_the_same_pass_equal_resample_labels(padding_mode, label_dtype):
    """Each label's mask interpolated by the grid kernel, then the argmax (ties to the smaller label), as
    ``resample_labels`` computes it: equal, label for label."""
    from gpuprep.functional.resample import resample_labels

    for seed in range(4):
        volume, maps, out_shape = _case(seed, 3, torch.float32)
        labels = (volume * 2).round().clamp(-2, 3).to(label_dtype)
        labels = torch.cat([labels, labels.flip(3)], dim=1)[:, :3]
        image, label = fused_sampler.sample_grid_rule_with_labels(volume, labels, maps, out_shape, padding_mode,
                                                                  onehot=True)
        sampler = functools.partial(fused_sampler.sample_grid_rule, maps=maps, out_shape=out_shape, mode="linear",
                                    padding_mode=padding_mode)
        expected = resample_labels(labels, maps, out_shape, "linear", padding_mode, sampler=sampler)
        assert torch.equal(label, expected)
        assert torch.equal(image, fused_sampler.sample_grid_rule(volume, maps, out_shape, "linear", padding_mode))
    with pytest.raises(TypeError, match="int8"):
        fused_sampler.sample_grid_rule_with_labels(volume, labels.to(torch.int8), maps, out_shape, padding_mode,
                                                   onehot=True)
