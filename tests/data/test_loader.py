"""DeviceLoader: same batches as DataLoader + transform, reproducible params, errors, clean shutdown."""

from __future__ import annotations

import multiprocessing
import threading
import time
import traceback

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import gpuprep as gp
from gpuprep.data.loader import DeviceLoader
from gpuprep.errors import ConfigError, TransformError
from tests.conftest import oblique_affine

KEYS = ["image", "label"]
THREAD_NAME = "gpuprep-DeviceLoader"


class Samples(Dataset):
    """Small in-memory samples; ``fail_at`` makes one index raise, as a corrupt file would."""

    def __init__(self, count: int = 7, fail_at: int | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        self.samples = []
        for index in range(count):
            image = torch.rand(1, 10, 9, 8, generator=generator)
            label = (image * 3).to(torch.uint8)
            affine = oblique_affine(origin=(float(index), -3.0, 7.5))
            sample = gp.make_sample({"image": image, "label": label}, affine=affine)
            sample["sample_index"] = index
            self.samples.append(sample)
        self.fail_at = fail_at

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if index == self.fail_at:
            raise ValueError(f"broken sample {index}")
        return self.samples[index]


def augment(seed: int = 7) -> gp.Compose:
    return gp.Compose([
        gp.RandAffine(KEYS, rotate=10, scale=0.1, translate=2, p=0.8),
        gp.RandFlip(KEYS, axes=(0, 1, 2)),
        gp.RandNoise("image", std=(0.05, 0.1)),
    ], seed=seed)


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def assert_same_batch(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in KEYS:
        assert a[key].dtype == b[key].dtype
        assert torch.equal(a[key], b[key]), key
        assert torch.equal(gp.get_affine(a, key), gp.get_affine(b, key))
    assert a["sample_index"] == b["sample_index"]
    assert gp.get_history(a) == gp.get_history(b)


def per_sample(batches) -> dict[int, dict]:
    return {s["sample_index"]: s for batch in batches for s in gp.decollate(batch)}


@pytest.mark.parametrize("prefetch", [0, 2])
def test_cpu_batches_equal_dataloader_then_transform(prefetch):
    loader = DataLoader(Samples(), batch_size=2, num_workers=2, collate_fn=gp.collate)
    expected = [augment()(batch) for batch in loader]
    plain = list(loader)
    got = list(DeviceLoader(loader, device="cpu", transform=augment(), prefetch=prefetch))
    assert len(got) == len(expected) == 4
    for out, ref, raw in zip(got, expected, plain):
        assert_same_batch(out, ref)
        assert out["image"].device.type == "cpu" and out["label"].dtype == torch.uint8
        assert not torch.equal(out["image"], raw["image"])  # it was augmented
        assert gp.get_affine(out, "image").dtype == torch.float64


def test_params_of_a_sample_do_not_depend_on_batch_size_or_workers():
    dataset = Samples()
    runs = [
        per_sample(DeviceLoader(DataLoader(dataset, batch_size=b, num_workers=w, collate_fn=gp.collate),
                                device="cpu", transform=augment(), prefetch=p))
        for b, w, p in [(2, 2, 2), (3, 0, 1), (7, 0, 0)]
    ]
    alone = {i: augment()(dataset[i]) for i in range(len(dataset))}  # one sample at a time
    for index, reference in alone.items():
        for run in runs:
            assert gp.get_history(run[index]) == gp.get_history(reference)
            for key in KEYS:
                torch.testing.assert_close(run[index][key], reference[key], rtol=0, atol=1e-6)
    histories = [gp.get_history(alone[i])[0]["params"] for i in range(len(dataset))]
    assert len({repr(h) for h in histories}) == len(dataset)  # every sample drew its own


def test_set_epoch_reaches_transform_and_distributed_sampler():
    dataset = Samples()
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
    transform = augment()
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=gp.collate)
    device_loader = DeviceLoader(loader, device="cpu", transform=transform)
    first = per_sample(device_loader)
    device_loader.set_epoch(5)
    assert sampler.epoch == 5 and transform.epoch == 5
    reference_sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
    reference_sampler.set_epoch(5)
    batches = list(device_loader)
    assert [i for b in batches for i in b["sample_index"]] == list(reference_sampler)
    fifth = per_sample(batches)
    assert all(gp.get_history(fifth[i]) != gp.get_history(first[i]) for i in range(len(dataset)))
    reference = gp.Compose(augment().transforms, seed=7)
    reference.set_epoch(5)
    assert gp.get_history(fifth[2]) == gp.get_history(reference(dataset[2]))
    with pytest.raises(ConfigError, match="epoch"):
        device_loader.set_epoch(-1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataset_error_surfaces_with_its_message_and_traceback(num_workers):
    children = set(multiprocessing.active_children())
    loader = DataLoader(Samples(fail_at=3), batch_size=2, num_workers=num_workers, collate_fn=gp.collate)
    seen = []
    with pytest.raises(ValueError, match="broken sample 3") as info:
        for batch in DeviceLoader(loader, device="cpu", transform=augment(), prefetch=2):
            seen.extend(batch["sample_index"])
    assert seen == [0, 1]  # the batches before the bad one were delivered
    text = "".join(traceback.format_exception(info.value))
    assert "__getitem__" in text  # the dataset's frame (or, from a worker, its formatted traceback)
    assert loader_threads() == []
    # The workers are shut down already, although the exception (and its traceback) is alive.
    assert set(multiprocessing.active_children()) <= children


def test_transform_error_is_reraised_as_the_same_object():
    def failing(batch):
        raise RuntimeError("augmentation failed on purpose")

    loader = DataLoader(Samples(), batch_size=2, collate_fn=gp.collate)
    with pytest.raises(RuntimeError, match="on purpose") as info:
        next(iter(DeviceLoader(loader, device="cpu", transform=failing)))
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "failing" in frames and "_run" in frames  # raised in the thread, traceback kept
    assert loader_threads() == []


@pytest.mark.parametrize("num_workers", [0, 2])
def test_break_out_of_the_loop_leaves_no_thread(num_workers):
    before = set(threading.enumerate())
    loader = DataLoader(Samples(), batch_size=1, num_workers=num_workers, collate_fn=gp.collate)
    device_loader = DeviceLoader(loader, device="cpu", transform=augment(), prefetch=1)
    for _ in device_loader:
        assert len(loader_threads()) == 1
        time.sleep(0.2)  # let the thread fill the queue and block on the next put
        break
    assert loader_threads() == []
    if num_workers == 0:
        assert {t for t in threading.enumerate() if t.is_alive()} <= before


def test_closing_an_endless_loader_stops_the_thread():
    def endless():
        while True:
            yield gp.collate([Samples(1)[0]])

    iterator = iter(DeviceLoader(endless(), device="cpu", prefetch=3))
    assert next(iterator)["image"].shape == (1, 1, 10, 9, 8)
    iterator.close()
    assert loader_threads() == []
    with pytest.raises(TypeError, match="no len"):
        len(DeviceLoader(endless(), device="cpu"))


def test_prefetch_zero_runs_in_the_consumer_thread():
    loader = DataLoader(Samples(), batch_size=3, collate_fn=gp.collate)
    for out, ref in zip(DeviceLoader(loader, device="cpu", transform=augment(), prefetch=0), map(augment(), loader)):
        assert loader_threads() == []
        assert_same_batch(out, ref)


def test_len_input_batches_untouched_and_channels_last():
    batches = [gp.collate(Samples(4).samples[:2]), gp.collate(Samples(4).samples[2:])]
    copies = [{k: v.clone() for k, v in b.items() if isinstance(v, torch.Tensor)} for b in batches]
    device_loader = DeviceLoader(batches, device="cpu", transform=augment(), channels_last=True)
    assert len(device_loader) == 2
    out = list(device_loader)
    for batch, copy, result, ref in zip(batches, copies, out, map(augment(), batches)):
        assert all(torch.equal(batch[k], v) for k, v in copy.items())
        assert gp.get_history(batch) == [[], []]
        assert result["image"].is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(result["image"], ref["image"])


def test_monai_style_training_loop():
    monai_losses = pytest.importorskip("monai.losses")
    torch.manual_seed(0)
    model = torch.nn.Conv3d(1, 4, 3, padding=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_function = monai_losses.DiceLoss(to_onehot_y=True, softmax=True)
    start = model.weight.detach().clone()
    loader = DataLoader(Samples(), batch_size=2, num_workers=2, shuffle=True, collate_fn=gp.collate)
    device_loader = DeviceLoader(loader, device="auto", transform=augment())
    losses = []
    for epoch in range(2):
        device_loader.set_epoch(epoch)
        for batch in device_loader:
            inputs, labels = batch["image"], batch["label"]
            optimizer.zero_grad()
            loss = loss_function(model(inputs), labels)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    assert len(losses) == 2 * len(device_loader)
    assert all(0.0 <= value <= 1.0 for value in losses)
    assert not torch.equal(model.weight.detach(), start)


def test_argument_errors():
    batches = [gp.collate(Samples(2).samples)]
    with pytest.raises(ConfigError, match="prefetch must be a non-negative integer, got -1"):
        DeviceLoader(batches, prefetch=-1)
    with pytest.raises(ConfigError, match=r"device must be .* got 'gpu0'"):
        DeviceLoader(batches, device="gpu0")
    with pytest.raises(ConfigError, match="transform must be callable"):
        DeviceLoader(batches, transform=3)
    with pytest.raises(ConfigError, match="channels_last must be True or False"):
        DeviceLoader(batches, channels_last="yes")
    with pytest.raises(ConfigError, match="loader must be an iterable"):
        DeviceLoader(5)
    with pytest.raises(TransformError, match=r"batch dicts .* got list"):
        list(DeviceLoader([[torch.zeros(1)]], device="cpu"))
    assert DeviceLoader(batches, device=torch.device("cpu")).device == torch.device("cpu")
    assert DeviceLoader(batches).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            DeviceLoader(batches, device="cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the copy stream needs CUDA")
def test_cuda_copies_on_a_side_stream_and_keeps_metadata_on_the_cpu():
    loader = DataLoader(Samples(), batch_size=2, num_workers=2, collate_fn=gp.collate)
    spatial = gp.Compose([gp.RandAffine(KEYS, rotate=10, scale=0.1), gp.RandFlip(KEYS)], seed=1)
    expected = [spatial(batch) for batch in loader]
    got = list(DeviceLoader(loader, device="cuda", transform=spatial, prefetch=2))
    assert len(got) == len(expected)
    for out, ref in zip(got, expected):
        assert out["image"].is_cuda and out["label"].is_cuda and out["label"].dtype == torch.uint8
        assert gp.get_affine(out, "image").device.type == "cpu"
        assert gp.get_history(out) == gp.get_history(ref)
        torch.testing.assert_close(out["image"].cpu(), ref["image"], rtol=0, atol=1e-4)
    assert loader_threads() == []
