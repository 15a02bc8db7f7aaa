"""End-to-end loader throughput: volumes per second delivered to a training loop, gpuprep vs MONAI vs TorchIO.

16 NIfTI volumes derived from the MNI152 1 mm T1 and its tissue labels (int16 image and uint8
labels, each with its own intensity scale, gzip-compressed) are loaded, preprocessed
(reorient to RAS, z-normalise, crop/pad to 160 x 192 x 160) and augmented (RandAffine rotate
±15° scale ±10 %, RandFlip, RandBiasField, RandGamma, RandNoise: the pipeline of the
augmentation benchmark) in batches of 2 with 2 DataLoader workers:

- gpuprep: ``CacheDataset`` (memory) runs the deterministic preprocessing once; the DataLoader
  delivers cached batches and ``DeviceLoader`` augments each whole batch on the device;
- MONAI: ``CacheDataset`` (cache_rate 1) with the same steps, then ``DataLoader`` (2 workers,
  each sample augmented in a worker) and ``ThreadDataLoader``;
- TorchIO: ``SubjectsDataset`` + ``DataLoader`` (2 workers; TorchIO has no cache, so every
  epoch loads and preprocesses again).

The first epoch includes building the caches; steady state is the mean of the later epochs.
The consumer does no training work, so this is the ceiling each loader can feed.

Run: ``python benchmarks/bench_loader.py [--threads 2] [--epochs 3] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import machine_line, mni_t1_and_tissue

import gpuprep as gp
from gpuprep.data.cache import CacheDataset
from gpuprep.data.loader import DeviceLoader

N_VOLUMES = 16
BATCH = 2
WORKERS = 2
SHAPE = (160, 192, 160)
KEYS = ["image", "label"]


def write_volumes(folder: Path) -> list[dict]:
    """16 image/label NIfTI pairs: the MNI T1 with a different intensity scale each, as int16."""
    t1, labels, affine = mni_t1_and_tissue(1)
    records = []
    for index in range(N_VOLUMES):
        image = np.round(t1 * (8.0 + 0.5 * index)).astype(np.int16)
        record = {key: str(folder / f"sub-{index:02d}_{key}.nii.gz") for key in KEYS}
        gp.write_image(record["image"], image[None], affine)
        gp.write_image(record["label"], labels[None], affine)
        records.append(record)
    return records


def gpuprep_epochs(records, epochs: int, device: str) -> list[float]:
    preprocess = [gp.LoadImage(KEYS, labels="label", dtype={"image": "float32"}), gp.Orientation(KEYS, "RAS"),
                  gp.ZNormalize("image"), gp.CropOrPad(KEYS, SHAPE)]
    augment = gp.Compose([
        gp.RandAffine(KEYS, rotate=15, scale=0.1),
        gp.RandFlip(KEYS, axes=0, p=0.5),
        gp.RandBiasField("image", coefficients=0.5, order=3),
        gp.RandGamma("image", log_gamma=(-0.3, 0.3)),
        gp.RandNoise("image", std=(0, 0.1)),
    ], seed=0)
    start = time.perf_counter()
    dataset = CacheDataset(records, gp.Compose(preprocess), cache="memory", num_workers=WORKERS)
    build = time.perf_counter() - start
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                                         collate_fn=gp.collate, persistent_workers=True)
    device_loader = DeviceLoader(loader, device=device, transform=augment, prefetch=2)
    times = []
    for epoch in range(epochs):
        device_loader.set_epoch(epoch)
        times.append(_consume(device_loader) + (build if epoch == 0 else 0.0))
    return times


def monai_epochs(records, epochs: int, threaded: bool) -> list[float]:
    from monai.data import CacheDataset as MonaiCache
    from monai.data import DataLoader, ThreadDataLoader
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        RandAdjustContrastd,
        RandAffined,
        RandBiasFieldd,
        RandFlipd,
        RandGaussianNoised,
        ResizeWithPadOrCropd,
    )

    angle = math.radians(15)
    transform = Compose([
        LoadImaged(KEYS, image_only=True),
        EnsureChannelFirstd(KEYS),
        Orientationd(KEYS, axcodes="RAS"),
        NormalizeIntensityd("image"),
        ResizeWithPadOrCropd(KEYS, SHAPE),
        RandAffined(KEYS, prob=1.0, rotate_range=(angle,) * 3, scale_range=(0.1,) * 3,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandFlipd(KEYS, prob=0.5, spatial_axis=0),
        RandBiasFieldd("image", prob=1.0, coeff_range=(-0.5, 0.5), degree=3),
        RandAdjustContrastd("image", prob=1.0, gamma=(math.exp(-0.3), math.exp(0.3))),
        RandGaussianNoised("image", prob=1.0, std=0.1),
    ])
    transform.set_random_state(0)
    start = time.perf_counter()
    dataset = MonaiCache(records, transform, cache_rate=1.0, num_workers=WORKERS, progress=False)
    build = time.perf_counter() - start
    if threaded:
        loader = ThreadDataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0, buffer_size=2)
    else:
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS, persistent_workers=True)
    return [_consume(loader) + (build if epoch == 0 else 0.0) for epoch in range(epochs)]


def torchio_epochs(records, epochs: int) -> list[float]:
    import torchio as tio

    transform = tio.Compose([
        tio.ToCanonical(),
        tio.ZNormalization(),
        tio.CropOrPad(SHAPE),
        tio.RandomAffine(scales=0.1, degrees=15),
        tio.RandomFlip(axes=(0,)),
        tio.RandomBiasField(coefficients=0.5, order=3),
        tio.RandomGamma(log_gamma=(-0.3, 0.3)),
        tio.RandomNoise(std=(0, 0.1)),
    ])
    subjects = [tio.Subject(image=tio.ScalarImage(r["image"]), label=tio.LabelMap(r["label"])) for r in records]
    dataset = tio.SubjectsDataset(subjects, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                                         persistent_workers=True)
    return [_consume(loader) for _ in range(epochs)]


def _consume(loader) -> float:
    """Seconds to draw every batch (touching the image tensor) of one epoch."""
    start = time.perf_counter()
    count = 0
    for batch in loader:
        image = batch["image"]
        image = image["data"] if isinstance(image, dict) else image  # TorchIO batches hold dicts
        count += image.shape[0]
    elapsed = time.perf_counter() - start
    if count != N_VOLUMES:
        raise RuntimeError(f"an epoch delivered {count} volumes, expected {N_VOLUMES}")
    return elapsed



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-torchio", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import monai
    import torchio

    print(f"machine: {machine_line()}")
    print(f"input: {N_VOLUMES} NIfTI volumes (1 mm MNI-derived, int16 .nii.gz) -> {SHAPE}; batch {BATCH}, "
          f"{WORKERS} DataLoader workers; {args.epochs} epochs\n")
    with tempfile.TemporaryDirectory() as folder:
        records = write_volumes(Path(folder))
        rows = [(f"gpuprep {gp.__version__} CacheDataset + DeviceLoader ({args.device})",
                 gpuprep_epochs(records, args.epochs, args.device)),
                (f"MONAI {monai.__version__} CacheDataset + DataLoader", monai_epochs(records, args.epochs, False)),
                (f"MONAI {monai.__version__} CacheDataset + ThreadDataLoader",
                 monai_epochs(records, args.epochs, True))]
        if not args.skip_torchio:
            rows.append((f"TorchIO {torchio.__version__} SubjectsDataset + DataLoader",
                         torchio_epochs(records, args.epochs)))
    ours = np.mean(rows[0][1][1:])
    print("| loader | first epoch volumes/s | steady volumes/s | gpuprep steady speed-up |")
    print("|---|---:|---:|---:|")
    for name, times in rows:
        steady = float(np.mean(times[1:]))
        print(f"| {name} | {N_VOLUMES / times[0]:.2f} | {N_VOLUMES / steady:.2f} | {steady / ours:.1f}x |")


if __name__ == "__main__":
    main()
