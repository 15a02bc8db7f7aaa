"""DeviceLoader: the augmentation stage after the DataLoader, on the GPU when there is one.

The usual split is: DataLoader workers read and preprocess single samples on the CPU and
:func:`gpuprep.collate` stacks them; :class:`DeviceLoader` then moves each batch to the
training device and runs a batched augmentation :class:`~gpuprep.Compose` there, while the next
batches are already being loaded (and copied).

How batches flow (``prefetch > 0``): one background thread pulls batches from the loader's
iterator and *stages* them into a bounded :class:`queue.Queue` of ``prefetch`` entries; the
consumer (your training loop) *finishes* them.

- CUDA. Staging pins the host tensors (unless the DataLoader already did, ``pin_memory=True``)
  and issues ``tensor.to(device, non_blocking=True)`` on a side :class:`torch.cuda.Stream`,
  then records a :class:`torch.cuda.Event` on it. Finishing makes the consumer's current stream
  wait on that event (no host synchronisation), calls ``tensor.record_stream(current)`` on each
  copied tensor, so the caching allocator does not hand the memory back to the side stream
  while the consumer stream still uses it, and applies ``transform`` on the device, on the
  consumer's stream. Pinned source buffers stay valid until the copy ends: PyTorch's pinned
  allocator records the copy's stream before a buffer is reused.
- CPU. Staging is loading plus ``transform`` (torch releases the GIL in its kernels, so the
  augmentation of the next batches overlaps the training step); finishing does nothing more.

Only the top-level tensors of a batch (images ``[B, C, D, H, W]``, and e.g. class targets) move
to the device; the metadata dicts (``f"{key}_meta"``, float64 affines) and lists (paths,
histories, ``sample_index``) stay on the CPU, as everywhere in gpuprep.

Random parameters do not depend on where or when a batch is augmented: they come from
``(pipeline seed, epoch, sample_index)`` (see :mod:`gpuprep.random.seeding`), so a run gives the
same parameters whatever ``num_workers``, ``batch_size``, ``prefetch`` or the device.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from ..errors import ConfigError, TransformError
from ..validation import check_bool

__all__ = ["DeviceLoader"]

_THREAD_NAME = "gpuprep-DeviceLoader"
_POLL_S = 0.05  # how often a blocked producer or consumer checks whether the other side gave up


class DeviceLoader:
    """Move each batch of a loader to a device and augment it there, prefetching the next ones.

    Parameters
    ----------
    loader:
        An iterable of batch dicts, usually a :class:`torch.utils.data.DataLoader` with
        ``collate_fn=gpuprep.collate`` (or :func:`~gpuprep.data.pad_collate.pad_collate`).
    device:
        ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a
        :class:`torch.device`.
    transform:
        A callable applied to every batch on the device, typically a batched augmentation
        ``gp.Compose([...], seed=...)``; None: no transform.
    prefetch:
        Number of batches staged ahead by a background thread (loaded, and on CUDA already being
        copied); 0 loads, copies and transforms each batch in the consumer's thread.
    non_blocking:
        Copy host-to-device asynchronously from pinned memory (CUDA only).
    channels_last:
        Return 5-D tensors in ``torch.channels_last_3d`` memory format (for models that run
        faster so, e.g. with cuDNN and mixed precision); values are unchanged.

    Notes
    -----
    ``len(device_loader) == len(loader)``. Breaking out of the loop stops and joins the
    background thread (it finishes the batch it is loading first). An exception raised while
    loading or transforming (e.g. in the dataset) is re-raised in the consumer, as the same
    object with its original traceback (every frame kept; the local variables of the loader's
    frames are released, so a DataLoader's workers shut down at once). Call :meth:`set_epoch`
    between epochs, not during one.

    Example
    -------
    The yielded batches are used like MONAI's, as ``batch["image"]`` and ``batch["label"]``:

    >>> import gpuprep as gp, torch
    >>> from gpuprep.data.loader import DeviceLoader
    >>> samples = [gp.make_sample({"image": torch.rand(1, 8, 8, 8),
    ...                            "label": torch.randint(0, 2, (1, 8, 8, 8))}) for _ in range(4)]
    >>> for i, s in enumerate(samples):
    ...     s["sample_index"] = i
    >>> loader = torch.utils.data.DataLoader(samples, batch_size=2, collate_fn=gp.collate)
    >>> augment = gp.Compose([gp.RandFlip(["image", "label"]), gp.RandNoise("image", std=0.1)], seed=0)
    >>> device_loader = DeviceLoader(loader, device="auto", transform=augment)
    >>> for epoch in range(2):
    ...     device_loader.set_epoch(epoch)
    ...     for batch in device_loader:
    ...         images, labels = batch["image"], batch["label"]  # on the device, [2, 1, 8, 8, 8]
    >>> len(device_loader), tuple(images.shape), labels.dtype
    (2, (2, 1, 8, 8, 8), torch.int64)
    """

    def __init__(
        self,
        loader: Iterable,
        device: str | torch.device = "auto",
        transform: Callable[[Mapping], Mapping] | None = None,
        prefetch: int = 2,
        non_blocking: bool = True,
        channels_last: bool = False,
    ) -> None:
        if not isinstance(loader, Iterable):
            raise ConfigError(f"DeviceLoader: loader must be an iterable of batches, got {type(loader).__name__}")
        if transform is not None and not callable(transform):
            raise ConfigError(f"DeviceLoader: transform must be callable or None, got {type(transform).__name__}")
        if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
            raise ConfigError(f"DeviceLoader: prefetch must be a non-negative integer, got {prefetch!r}")
        check_bool("DeviceLoader", "non_blocking", non_blocking)
        check_bool("DeviceLoader", "channels_last", channels_last)
        self.loader = loader
        self.device = resolve_device(device)
        self.transform = transform
        self.prefetch = prefetch
        self.non_blocking = non_blocking
        self.channels_last = channels_last
        self._copy_stream: Any = None  # the CUDA side stream, made on first iteration

    def __len__(self) -> int:
        try:
            return len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"DeviceLoader: the wrapped {type(self.loader).__name__} has no len()") from None

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the transform (its random parameters) and of the loader's sampler.

        Forwards to ``transform.set_epoch`` (e.g. :meth:`gpuprep.Compose.set_epoch`) and to
        ``loader.sampler.set_epoch`` (e.g. :class:`~torch.utils.data.DistributedSampler`) when
        they exist.
        """
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ConfigError(f"DeviceLoader.set_epoch: epoch must be a non-negative integer, got {epoch!r}")
        for owner in (self.transform, getattr(self.loader, "sampler", None)):
            set_epoch = getattr(owner, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        if self.device.type == "cuda" and self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        if self.prefetch == 0:
            for batch in self.loader:
                yield self._finish(self._stage(batch))
            return
        producer = _Producer(iter(self.loader), self._stage, self.prefetch)
        try:
            while True:
                done, item = producer.get()
                if done:
                    if item is not None:
                        raise item  # the exception object carries its traceback from the thread
                    return
                yield self._finish(item)
        finally:
            producer.close()

    def __repr__(self) -> str:
        return (f"DeviceLoader(device={str(self.device)!r}, prefetch={self.prefetch}, "
                f"transform={type(self.transform).__name__ if self.transform is not None else None})")

    # -- staging (background thread) and finishing (consumer) --------------------------------

    def _stage(self, batch: Any) -> Any:
        _check_batch(batch)
        if self.device.type == "cuda":
            return self._stage_cuda(batch)
        if self.device.type == "cpu":
            return self._apply(_move(batch, lambda t: t.to(self.device)))
        return batch  # other devices (mps, xpu, ...): a plain copy when finishing

    def _finish(self, staged: Any) -> dict:
        if self.device.type == "cuda":
            return self._finish_cuda(*staged)
        if self.device.type == "cpu":
            return staged
        return self._apply(_move(staged, lambda t: t.to(self.device, non_blocking=self.non_blocking)))

    def _stage_cuda(self, batch: Mapping) -> tuple[dict, Any]:
        """Start the host-to-device copies on the side stream; return the batch and an event."""

        def copy(tensor: torch.Tensor) -> torch.Tensor:
            if self.non_blocking and tensor.device.type == "cpu" and not tensor.is_pinned():
                tensor = tensor.pin_memory()
            return tensor.to(self.device, non_blocking=self.non_blocking)

        with torch.cuda.device(self.device), torch.cuda.stream(self._copy_stream):
            moved = _move(batch, copy)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        return moved, copied

    def _finish_cuda(self, batch: dict, copied: Any) -> dict:
        """Make the consumer's stream wait for the copies, then transform on that stream."""
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(copied)
            for value in batch.values():
                if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                    value.record_stream(stream)  # memory allocated on the side stream, used here
            return self._apply(batch)

    def _apply(self, batch: dict) -> dict:
        out = dict(self.transform(batch)) if self.transform is not None else batch
        if self.channels_last:
            out = {k: v.contiguous(memory_format=torch.channels_last_3d)
                   if isinstance(v, torch.Tensor) and v.ndim == 5 else v for k, v in out.items()}
        return out


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"``, a device string or a :class:`torch.device` into a checked device.

    Example
    -------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"DeviceLoader: device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"DeviceLoader: device {device!r} asked for CUDA, but CUDA is not available here")
        index = torch.cuda.current_device() if resolved.index is None else resolved.index
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"DeviceLoader: device {device!r} does not exist; {torch.cuda.device_count()} CUDA device(s) here"
            )
        resolved = torch.device("cuda", index)
    return resolved


def _check_batch(batch: Any) -> None:
    if not isinstance(batch, Mapping):
        raise TransformError(
            f"DeviceLoader: the loader must yield batch dicts (use collate_fn=gpuprep.collate), "
            f"got {type(batch).__name__}"
        )


def _move(batch: Mapping, move: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """A new dict with ``move`` applied to the top-level tensors; metadata and lists stay as they are."""
    return {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _Producer:
    """A thread that pulls items from ``iterator``, stages them and queues up to ``size`` of them.

    The queue holds ``(done, value)`` pairs: ``(False, staged batch)``, then ``(True, None)`` at
    the end or ``(True, exception)`` when loading or staging raised.
    """

    def __init__(self, iterator: Iterator, stage: Callable[[Any], Any], size: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator, stage), name=_THREAD_NAME, daemon=True)
        self._thread.start()

    def _run(self, iterator: Iterator, stage: Callable[[Any], Any]) -> None:
        try:
            for batch in iterator:
                if self._stop.is_set() or not self._put((False, stage(batch))):
                    return
            self._put((True, None))
        except BaseException as error:  # handed to the consumer, which re-raises it
            # The traceback keeps its frames (files, lines, functions) but drops their locals, so
            # nothing but the thread's arguments holds the loader's iterator: a DataLoader then
            # shuts its workers down when the thread ends, not later from the cycle collector
            # (where PyTorch's worker shutdown stalls for seconds).
            if error.__traceback__ is not None:  # always set on a caught exception
                traceback.clear_frames(error.__traceback__.tb_next)
            iterator = None  # type: ignore[assignment]
            self._put((True, error))

    def _put(self, item: tuple) -> bool:
        """Queue ``item``, waiting while the queue is full; False if the consumer stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> tuple[bool, Any]:
        """The next ``(done, value)`` pair, waiting for the thread."""
        while True:
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return True, RuntimeError("DeviceLoader: the loading thread ended without a result")

    def close(self) -> None:
        """Stop the thread, drop the batches it staged and wait for it to end."""
        self._stop.set()
        while self._thread.is_alive():
            self._drain()
            self._thread.join(_POLL_S)
        self._drain()

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
