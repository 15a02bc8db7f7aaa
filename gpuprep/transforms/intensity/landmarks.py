"""Reading, writing and checking histogram-standardisation landmarks (JSON, ``.npy``, ``.pt``/``.pth``).

Landmarks are the intensities of the standard histogram at the landmark percentiles: a 1-D
array per image key (``{"t1": [...], "t2": [...]}``), or one array for every key. Files:

* ``.json`` (preferred, human-readable, records how the landmarks were made)::

      {"format": "gpuprep-histogram-landmarks", "version": 1,
       "cutoff": [0.01, 0.99], "quantiles": [0.1, ..., 0.9], "output_range": [0, 100],
       "percentiles": [1, 10, ..., 90, 99], "landmarks": {"t1": [...]} or [...]}

* ``.npy``: one array (TorchIO's ``train(output_path=...)`` format);
* ``.pt``/``.pth``: ``torch.save`` of an array/tensor or a dict of them (TorchIO's format for
  dicts; loaded with ``weights_only=True``, NumPy arrays allowed, no arbitrary code).

A TorchIO landmark array has 13 values: its percentile set also holds the quartiles 25 and 75,
which its transform never uses. Such an array is accepted for the default settings and the
two quartiles are dropped.

Writes are atomic (:func:`gpuprep.io.atomic.atomic_write_bytes`).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError
from ...functional.histogram_standardize import landmark_percentiles
from ...io.atomic import atomic_write_bytes

FORMAT = "gpuprep-histogram-landmarks"
VERSION = 1
SUFFIXES = (".json", ".npy", ".pt", ".pth")


def _torchio_percentiles(cutoff: Sequence[float]) -> list[float]:
    """TorchIO's percentile set for a cutoff: cutoffs, quartiles and deciles."""
    return sorted({100.0 * float(cutoff[0]), 100.0 * float(cutoff[1]), 25.0, 50.0, 75.0, *range(10, 100, 10)})


def as_landmark_vector(
    owner: str, name: str, value: Any, cutoff: Sequence[float], quantiles: Sequence[float]
) -> torch.Tensor:
    """Check one landmark array against the percentile layout and return it as float64 ``[K]``."""
    percentiles = landmark_percentiles(cutoff, quantiles)
    try:
        vector = torch.as_tensor(
            np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
        )
    except (TypeError, ValueError):
        raise ConfigError(
            f"{owner}: {name} must be an array of numbers, got {type(value).__name__}"
        ) from None
    vector = vector.reshape(-1) if vector.ndim == 2 and 1 in vector.shape else vector
    if vector.ndim != 1:
        raise ConfigError(f"{owner}: {name} must be 1-D, got shape {tuple(vector.shape)}")
    tio = _torchio_percentiles(cutoff)
    if len(vector) == len(tio) != len(percentiles) and set(percentiles) <= set(tio):
        vector = vector[[tio.index(p) for p in percentiles]]
    if len(vector) != len(percentiles):
        raise ConfigError(
            f"{owner}: {name} must hold {len(percentiles)} values (one per percentile {percentiles}), "
            f"got {len(vector)}"
        )
    if not bool(torch.isfinite(vector).all()) or bool((vector.diff() < 0).any()):
        raise ConfigError(f"{owner}: {name} must be finite and non-decreasing, got {vector.tolist()}")
    return vector


def _numpy_safe_globals() -> list:
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64)]
    return [multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def read_landmarks_file(path: str | os.PathLike) -> tuple[Any, dict]:
    """Read a landmarks file: ``(landmarks, info)``; ``info`` holds the JSON settings (else empty)."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"landmarks file must end with one of {SUFFIXES}, got {str(path)!r}")
    if not path.is_file():
        raise ConfigError(f"landmarks file not found: {str(path)!r}")
    if suffix == ".json":
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read landmarks JSON {str(path)!r}: {error}") from None
        if not isinstance(document, Mapping) or "landmarks" not in document:
            raise ConfigError(f"landmarks JSON {str(path)!r} has no 'landmarks' entry")
        info = {k: document[k] for k in ("cutoff", "quantiles", "output_range") if k in document}
        return document["landmarks"], info
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False), {}
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read landmarks array {str(path)!r}: {error}") from None
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True), {}
    except Exception as error:  # unpickling raises many kinds
        raise ConfigError(f"cannot read landmarks file {str(path)!r} (weights_only): {error}") from None


def load_landmarks(path: str | os.PathLike) -> torch.Tensor | dict[str, torch.Tensor]:
    """Load landmarks saved by :func:`save_landmarks` (or TorchIO): a tensor or a dict of tensors.

    Values that are themselves paths (TorchIO's dict of ``.npy`` paths) are loaded too.

    Example
    -------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "landmarks.json"
    >>> _ = save_landmarks({"t1": torch.linspace(0, 100, 11)}, path)
    >>> load_landmarks(path)["t1"][-1].item()
    100.0
    """
    value, _ = read_landmarks_file(path)
    return landmarks_to_tensors(value, Path(path).expanduser().parent)


def landmarks_to_tensors(value: Any, folder: Path) -> Any:
    if isinstance(value, Mapping):
        return {str(k): landmarks_to_tensors(v, folder) for k, v in value.items()}
    if isinstance(value, (str, os.PathLike)):
        target = Path(value).expanduser()
        target = target if target.is_absolute() else folder / target
        inner, _ = read_landmarks_file(target)
        return landmarks_to_tensors(inner, target.parent)
    array = value.detach().cpu() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=np.float64)
    return torch.as_tensor(array, dtype=torch.float64)


def save_landmarks(
    landmarks: Any,
    path: str | os.PathLike,
    *,
    cutoff: Sequence[float] | None = None,
    quantiles: Sequence[float] | None = None,
    output_range: Sequence[float] | None = None,
) -> Path:
    """Write landmarks (an array, or a dict key -> array) atomically; the format follows the suffix.

    ``.json`` records ``cutoff``, ``quantiles`` and ``output_range`` when given (defaults of
    :class:`HistogramStandardize` otherwise); ``.npy`` takes a single array; ``.pt``/``.pth`` a
    tensor or dict of tensors. Returns the path.
    """
    from ...functional.histogram_standardize import DEFAULT_CUTOFF, DEFAULT_QUANTILES, STANDARD_RANGE

    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"save_landmarks: path must end with one of {SUFFIXES}, got {str(path)!r}")
    values = landmarks_to_tensors(landmarks, path.parent)
    if suffix == ".json":
        cutoff = list(DEFAULT_CUTOFF if cutoff is None else cutoff)
        quantiles = list(DEFAULT_QUANTILES if quantiles is None else quantiles)
        document = {
            "format": FORMAT,
            "version": VERSION,
            "cutoff": [float(c) for c in cutoff],
            "quantiles": [float(q) for q in quantiles],
            "output_range": [float(v) for v in (STANDARD_RANGE if output_range is None else output_range)],
            "percentiles": landmark_percentiles(cutoff, quantiles),
            "landmarks": {k: v.tolist() for k, v in values.items()}
            if isinstance(values, dict)
            else values.tolist(),
        }
        data = (json.dumps(document, indent=2) + "\n").encode()
    elif suffix == ".npy":
        if isinstance(values, dict):
            raise ConfigError(
                f"save_landmarks: a .npy file holds one array, got a dict with keys {sorted(values)}; "
                "use .json or .pth for several keys"
            )
        stream = io.BytesIO()
        np.save(stream, values.numpy())
        data = stream.getvalue()
    else:
        stream = io.BytesIO()
        torch.save(values, stream)
        data = stream.getvalue()
    return atomic_write_bytes(path, data)
