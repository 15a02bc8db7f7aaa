"""Dataset: records in, transformed samples out, with bad files raised or skipped.

``Dataset(records, transform)`` is a ``torch.utils.data.Dataset``: item ``i`` is a copy of
record ``i`` with its index under ``"sample_index"``, passed through ``transform`` (usually a
:class:`~gpuprep.Compose` that starts with :class:`~gpuprep.LoadImage`). Random transforms seed
each sample's stream from that index, so results do not depend on the number of workers or the
batch size.

Faults. With ``check_files=True`` every image path of every record is checked at construction
(it exists; a NIfTI/MGH header parses; an uncompressed file is long enough): cheap, no voxel is
read. A file that fails only when its data are read (a truncated ``.nii.gz`` body) fails in
``__getitem__``. ``on_error="raise"`` raises :class:`DatasetError` naming the record index, the
key and the file; ``on_error="skip"`` warns, lists the fault in :attr:`Dataset.report` and
drops the record (at construction) or returns None (in ``__getitem__``; use
:func:`collate_skip_none` as the DataLoader's ``collate_fn`` so the batch just has fewer
samples). A record is dropped whole, so an image is never paired with another record's label.

Indices: a dropped record keeps its place in the numbering. ``len(dataset)`` counts the kept
records; ``dataset[j]`` is the ``j``-th kept record and carries its **original** record index as
``sample_index`` (see :attr:`Dataset.indices`), so skipping a bad file does not change the
random parameters of any other sample.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import nibabel as nib
import numpy as np
import torch

from ..errors import ConfigError, GpuprepError, ImageReadError, MissingDependencyError, MissingKeyError
from ..io.detached import is_header_format
from ..io.itk_guard import check_itk_header
from ..io.limits import check_declared_bytes, checked_shape
from ..random.seeding import SAMPLE_INDEX_KEY
from ..sample import collate
from ..validation import check_bool
from .records import DatasetError, as_records, check_on_error, is_image_path

if TYPE_CHECKING:
    from nibabel.arrayproxy import ArrayProxy
    from nibabel.dataobj_images import DataobjImage

#: Errors that mean "this sample's data are bad" (skipped under on_error="skip"); anything else, and
#: the pipeline mistakes in NOT_DATA_ERRORS, always propagates.
DATA_ERRORS = (OSError, EOFError, zlib.error, GpuprepError)
NOT_DATA_ERRORS = (ConfigError, MissingKeyError, MissingDependencyError)


class Dataset(torch.utils.data.Dataset):
    """A map-style dataset of records, each loaded and transformed on access.

    Parameters
    ----------
    records:
        A list of dicts (key -> path or other value; all with the same keys), or the path of a
        ``.csv``/``.tsv`` table (read with :func:`~gpuprep.data.records.records_from_csv`). For
        folders build the list with ``records_from_folder`` or ``records_from_bids``.
    transform:
        Called on each sample (a dict of the record's values plus ``"sample_index"``); None
        returns the record as it is.
    on_error:
        ``"raise"`` (default) or ``"skip"``: what to do with a missing, unreadable or corrupt file.
    check_files:
        Check every image path (a ``PathLike`` or a string ending with an image extension) at
        construction.

    Attributes
    ----------
    report:
        The faults met so far under ``on_error="skip"``: dicts ``{index, key, file, error}``.
        Faults in ``__getitem__`` are recorded in the process that met them (a DataLoader
        worker's copy, for ``num_workers > 0``); they are also warned about.

    Example
    -------
    >>> import gpuprep as gp
    >>> paths = gp.data.sample_brain_paths()
    >>> data = Dataset([{"image": str(paths["image"])}], transform=gp.Compose([gp.LoadImage("image")]))
    >>> sample = data[0]
    >>> tuple(sample["image"].shape), sample["sample_index"]
    ((1, 99, 117, 95), 0)
    """

    def __init__(
        self,
        records: Sequence[Mapping] | str | os.PathLike,
        transform: Callable[[dict], Any] | None = None,
        on_error: str = "raise",
        check_files: bool = True,
    ) -> None:
        name = type(self).__name__
        self.on_error = check_on_error(on_error, name)
        if transform is not None and not callable(transform):
            raise ConfigError(f"{name}: transform must be callable or None, got {type(transform).__name__}")
        check_bool(name, "check_files", check_files)
        self.transform = transform
        self.report: list[dict] = []
        records = as_records(records, f"{name}: records")
        self._indices = list(range(len(records)))
        self._records = records
        if check_files:
            self._keep([self._check_record(i, r) for i, r in zip(self._indices, self._records)])

    # -- access --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, position: int) -> dict | None:
        index, record = self._indices[position], self._records[position]
        return self._guarded(index, record, lambda: self._make(index, record))

    @property
    def indices(self) -> list[int]:
        """Original record index of each kept record (the ``sample_index`` its samples carry)."""
        return list(self._indices)

    @property
    def records(self) -> list[dict]:
        """The kept records (copies)."""
        return [dict(r) for r in self._records]

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the transform (a :class:`~gpuprep.Compose`) so random draws change.

        Call it before iterating each epoch; DataLoader workers started afterwards see it (not
        ``persistent_workers``, which keep the state they started with).
        """
        if self.transform is not None and hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)

    # -- internals for subclasses --------------------------------------------------------------

    def _make(self, index: int, record: Mapping) -> dict:
        sample = {**record, SAMPLE_INDEX_KEY: index}
        return self.transform(sample) if self.transform is not None else sample

    def _guarded(self, index: int, record: Mapping, work: Callable[[], Any]) -> Any:
        """Run ``work`` for one record; turn data errors into DatasetError or a skip (None)."""
        try:
            return work()
        except Exception as error:
            if not isinstance(error, DATA_ERRORS) or isinstance(error, NOT_DATA_ERRORS):
                # a bug or a pipeline mistake, not bad data: keep the type, add which record
                if hasattr(error, "add_note"):
                    error.add_note(f"while making record {index} of {type(self).__name__}: {_paths(record)}")
                raise
            key, file = _culprit(record, error)
            where = f"key {key!r}, file {file}" if key is not None else f"files {_paths(record)}"
            message = f"{type(self).__name__}: record {index} ({where}) failed: {type(error).__name__}: {error}"
            if self.on_error == "raise":
                raise DatasetError(message) from error
            self._skip(index, key, file, error, message + "; skipped")
            return None

    def _skip(self, index: int, key: str | None, file: str | None, error: BaseException, message: str) -> None:
        self.report.append({"index": index, "key": key, "file": file, "error": f"{type(error).__name__}: {error}"})
        warnings.warn(message, stacklevel=3)

    def _keep(self, keep: list[bool]) -> None:
        """Drop the records whose flag is False (after they were reported)."""
        self._indices = [i for i, k in zip(self._indices, keep) if k]
        self._records = [r for r, k in zip(self._records, keep) if k]
        if not self._records:
            raise DatasetError(f"{type(self).__name__}: every record was skipped; report: {self.report}")

    def _check_record(self, index: int, record: Mapping) -> bool:
        for key, value in record.items():
            if not is_image_path(value):
                continue
            problem = check_image_file(value)
            if problem is not None:
                message = f"{type(self).__name__}: record {index}, key {key!r}, file {value}: {problem}"
                if self.on_error == "raise":
                    raise DatasetError(message)
                self._skip(index, key, str(value), DatasetError(problem), message + "; record skipped")
                return False
        return True


def check_image_file(path: str | os.PathLike) -> str | None:
    """Cheaply check that ``path`` looks like a readable image; return the problem, or None.

    The file must exist and not be empty; a NIfTI or MGH header must parse, declare a sane shape
    and, uncompressed, be long enough for its voxels; an NRRD or MetaImage header must name data
    files in its own folder only and declare no more voxels than its data can hold. No voxel
    data is read, so a compressed file with a corrupt body passes (it fails when read).

    Example
    -------
    >>> check_image_file("/nonexistent/sub-01_T1w.nii.gz")
    'does not exist'
    """
    path = Path(path)
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return None  # a DICOM series folder: checked when read
    size = path.stat().st_size
    if size == 0:
        return "is empty"
    name = path.name.lower()
    if is_header_format(name):
        try:
            check_itk_header(path)  # data files in the folder, declared size against the bytes present
        except ImageReadError as error:
            return f"header refused: {error}"
        return None
    if not name.endswith((".nii", ".nii.gz", ".mgh", ".mgz")):
        return None
    try:
        image = cast("DataobjImage", nib.load(path))  # these suffixes load as images read through a proxy
        proxy = cast("ArrayProxy", image.dataobj)
        _, nbytes = checked_shape(path, proxy.shape, np.dtype(proxy.dtype).itemsize)  # no int64 wrap-around
        needed = int(proxy.offset) + nbytes
        if name.endswith((".gz", ".mgz")):
            check_declared_bytes(path, nbytes, size, "deflate")
    except Exception as error:  # nibabel raises many types for a bad header
        return f"header cannot be read: {type(error).__name__}: {error}"
    if name.endswith((".nii", ".mgh")) and size < needed:
        return f"truncated: the header needs {needed} bytes, the file has {size}"
    return None


def collate_skip_none(samples: Sequence[dict | None]) -> dict | None:
    """DataLoader ``collate_fn`` that drops skipped samples (None) and collates the rest.

    Returns None when every sample of the batch was skipped (so a training loop can
    ``continue``).

    Example
    -------
    >>> import gpuprep as gp
    >>> a = gp.make_sample({"image": torch.zeros(1, 2, 2, 2)})
    >>> collate_skip_none([a, None, a])["image"].shape[0], collate_skip_none([None])
    (2, None)
    """
    kept = [s for s in samples if s is not None]
    return collate(kept) if kept else None


def _paths(record: Mapping) -> dict:
    return {k: str(v) for k, v in record.items() if is_image_path(v)}


def _culprit(record: Mapping, error: BaseException) -> tuple[str | None, str | None]:
    """The record key whose file the error is about (from its filename or message), if any."""
    text = f"{getattr(error, 'filename', '') or ''} {error}"
    for key, path in _paths(record).items():
        if path in text or os.path.abspath(path) in text:
            return key, path
    return None, None
