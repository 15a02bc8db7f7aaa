"""Two real DDP processes (gloo, CPU) fed by gpuprep: per-rank shards, reproducible parameters, synced models.

Each rank builds the same Dataset of NIfTI files, a DistributedSampler, a DataLoader with a
worker, and a DeviceLoader that augments its batches; it trains a tiny DDP model for one epoch
and writes what it saw. The parent checks that the ranks covered the dataset exactly once, that
each sample's random parameters equal those of a single-process run (they are seeded by the
sample index, not by the rank, the batch or the worker), and that DDP kept the models in sync.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gpuprep as gp
from gpuprep.data.dataset import Dataset
from gpuprep.data.loader import DeviceLoader

N_RECORDS = 7  # odd: DistributedSampler pads one rank by repeating a sample
SEED = 11


def _write_records(folder: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for index in range(N_RECORDS):
        image = rng.normal(size=(12, 12, 12)).astype(np.float32)
        label = (image > 0.5).astype(np.uint8)
        affine = np.diag([1.0 + 0.1 * index, 1.0, 1.2, 1.0])
        paths = {}
        for key, data in (("image", image), ("label", label)):
            paths[key] = str(folder / f"case{index}_{key}.nii.gz")
            nib.save(nib.Nifti1Image(data, affine), paths[key])
        records.append(paths)
    return records


def _pipelines():
    keys = ["image", "label"]
    preprocess = gp.Compose([gp.LoadImage(keys, labels="label", dtype={"image": "float32"}),
                             gp.Orientation(keys, "RAS")])
    augment = gp.Compose([gp.RandAffine(keys, rotate=10, scale=0.1), gp.RandFlip(keys),
                          gp.RandNoise("image", std=0.1)], seed=SEED)
    return preprocess, augment


def _augmentation_params(batch: dict) -> dict[int, list]:
    """Per sample index, the recorded parameters of the random steps."""
    seen = {}
    for sample in gp.decollate(batch):
        records = [r for r in gp.get_history(sample) if r["name"].startswith("Rand")]
        seen[int(sample["sample_index"])] = json.loads(json.dumps([r["params"] for r in records]))
    return seen


def _rank_main(rank: int, world: int, port: int, records: list[dict], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        preprocess, augment = _pipelines()
        dataset = Dataset(records, transform=preprocess)
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=3)
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=1,
                                             collate_fn=gp.collate)
        device_loader = DeviceLoader(loader, device="cpu", transform=augment)
        torch.manual_seed(0)  # the same initial weights on every rank
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Conv3d(1, 2, 3, padding=1))
        optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
        device_loader.set_epoch(1)
        seen: dict[int, list] = {}
        for batch in device_loader:
            seen.update(_augmentation_params(batch))
            loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"][:, 0].long())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        weights = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"seen": seen, "weights": weights}))
        # Tear down together: a rank whose DDP reducer outlives its peer's process group can hang
        # in gloo's destructor (seen once in CI), so free the model and wait for the other rank first.
        del model, optimiser
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_shard_the_data_with_reproducible_parameters(tmp_path):
    records = _write_records(tmp_path)
    # fork: the ranks start in a second instead of importing torch again (spawn takes ~10 s here)
    mp.start_processes(_rank_main, args=(2, _free_port(), records, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    # Every record was seen by one rank or the other (one repeated to even the shards).
    indices = [set(map(int, r["seen"])) for r in ranks]
    assert indices[0] | indices[1] == set(range(N_RECORDS))

    # A single process, whole dataset in one batch, no workers: the same parameters per sample.
    preprocess, augment = _pipelines()
    augment.set_epoch(1)
    dataset = Dataset(records, transform=preprocess)
    reference = _augmentation_params(augment(gp.collate([dataset[i] for i in range(N_RECORDS)])))
    for rank in ranks:
        for index, params in rank["seen"].items():
            assert params == reference[int(index)], f"sample {index} drew other parameters on its rank"

    # DDP averaged the gradients: both ranks end with the same weights, moved from the start.
    np.testing.assert_allclose(ranks[0]["weights"], ranks[1]["weights"], rtol=0, atol=1e-6)
    torch.manual_seed(0)
    initial = torch.cat([p.detach().flatten() for p in torch.nn.Conv3d(1, 2, 3, padding=1).parameters()])
    assert not np.allclose(ranks[0]["weights"], initial.numpy())
