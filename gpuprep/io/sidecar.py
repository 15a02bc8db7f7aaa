"""JSON sidecars: what a preprocessed image is and how it was made.

A sidecar sits beside its image with the image's extension replaced by ``.json``
(``sub-01_T1w.nii.gz`` -> ``sub-01_T1w.json``, as in BIDS) and holds::

    {
      "gpuprep_sidecar": 1,
      "gpuprep_version": "0.1.0",
      "created": "2026-01-31T12:00:00+00:00",          # UTC
      "versions": {"python": ..., "torch": ..., "numpy": ..., "nibabel": ..., "SimpleITK": ...},
      "source": "/data/sub-01_T1w.nii.gz",              # or null
      "output": {"filename": ..., "format": ..., "shape": [C, D, H, W], "dtype": ..., "affine": [[...]]},
      "history": [record, ...],                          # the sample's full history
      "pipeline": {"gpuprep_pipeline": 1, "seed": null, "transforms": [{"name", "config"}, ...]},
      ...                                                # extra fields given by the caller
    }

``pipeline`` is the history without its ``LoadImage``/``SaveImage`` records, so that
``gp.Compose.from_config(sidecar["pipeline"])`` rebuilds a pipeline that runs on a loaded sample
(load options stay visible in ``history``). It repeats the configuration, not the random draws:
``gp.replay(sample, history)`` repeats those.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigError, ImageReadError
from .atomic import atomic_write_bytes

SIDECAR_FORMAT = 1
#: Records left out of the sidecar's rebuildable ``pipeline`` (they need paths, not tensors).
IO_TRANSFORMS = frozenset({"LoadImage", "SaveImage"})
#: Extensions stripped to name sidecars and SaveImage outputs.
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """Return the sidecar path of an image: its image extension replaced by ``.json``.

    Example
    -------
    >>> sidecar_path("out/sub-01_T1w.nii.gz").as_posix()
    'out/sub-01_T1w.json'
    """
    path = Path(image_path)
    return path.with_name(strip_image_extension(path.name) + ".json")


def strip_image_extension(name: str) -> str:
    """Return a file name without its image extension (``.nii.gz``, ``.nii``, ``.mgz``, ...).

    Example
    -------
    >>> strip_image_extension("sub-01_T1w.nii.gz")
    'sub-01_T1w'
    """
    for extension in IMAGE_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def pipeline_from_history(history: Sequence[Mapping]) -> dict:
    """Build a :meth:`gpuprep.Compose.from_config` pipeline from history records (IO steps left out).

    Example
    -------
    >>> records = [{"name": "LoadImage", "config": {}}, {"name": "Orientation", "config": {"keys": "a"}}]
    >>> pipeline_from_history(records)["transforms"]
    [{'name': 'Orientation', 'config': {'keys': 'a'}}]
    """
    transforms = [
        {"name": record["name"], "config": to_json(record.get("config") or {})}
        for record in history
        if record.get("name") not in IO_TRANSFORMS
    ]
    return {"gpuprep_pipeline": 1, "seed": None, "transforms": transforms}


def make_sidecar(
    image_path: str | os.PathLike,
    *,
    output: Mapping[str, Any],
    history: Sequence[Mapping] | None = None,
    source: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Build the sidecar dict of ``image_path`` (see the module docstring), all JSON types.

    Parameters
    ----------
    image_path:
        The image the sidecar describes.
    output:
        Facts about the written image: ``shape``, ``dtype``, ``affine``, ``format``.
    history:
        The sample's history records.
    source:
        The file the image was made from, if any.
    extra:
        More top-level fields; they may not replace the standard ones.
    """
    history = list(history or [])
    sidecar = {
        "gpuprep_sidecar": SIDECAR_FORMAT,
        "gpuprep_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "source": None if source is None else str(source),
        "output": {"filename": Path(image_path).name, **output},
        "history": history,
        "pipeline": pipeline_from_history(history),
    }
    clash = sorted(set(extra or {}) & set(sidecar))
    if clash:
        raise ConfigError(f"extra_sidecar may not replace the standard sidecar fields {clash}")
    sidecar.update(extra or {})
    return to_json(sidecar)


def write_sidecar(image_path: str | os.PathLike, sidecar: Mapping[str, Any]) -> Path:
    """Write ``sidecar`` (from :func:`make_sidecar`) atomically beside ``image_path``; return its path."""
    return atomic_write_bytes(sidecar_path(image_path), dumps(sidecar).encode())


def dumps(sidecar: Mapping[str, Any]) -> str:
    """Serialise a sidecar as indented, strict JSON (no NaN tokens)."""
    return json.dumps(to_json(sidecar), indent=2, allow_nan=False) + "\n"


def read_sidecar(path: str | os.PathLike) -> dict:
    """Read the sidecar of an image (give the image path or the ``.json`` path).

    Example
    -------
    >>> import gpuprep as gp, tempfile
    >>> out = tempfile.mkdtemp()
    >>> saved = gp.Compose([gp.LoadImage("image"), gp.Orientation("image", "LAS"), gp.SaveImage("image", out)])(
    ...     {"image": str(gp.data.sample_brain_paths()["image"])})
    >>> sidecar = gp.read_sidecar(gp.get_history(saved)[-1]["params"]["image"]["filename"])
    >>> gp.Compose.from_config(sidecar["pipeline"]).transforms
    [Orientation(keys='image', axcodes='LAS', allow_missing_keys=False)]
    """
    path = Path(path)
    if not path.name.lower().endswith(".json"):
        path = sidecar_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sidecar not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ImageReadError(f"{path}: not a valid JSON sidecar: {error}") from None


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the output (SimpleITK when importable)."""
    import nibabel
    import numpy
    import torch

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "nibabel": nibabel.__version__,
    }
    try:
        import SimpleITK

        versions["SimpleITK"] = SimpleITK.Version_VersionString()
    except ImportError:
        pass
    return versions


def to_json(value: Any) -> Any:
    """Convert tensors, NumPy values, paths and tuples to JSON types; non-finite floats to None.

    Example
    -------
    >>> import numpy as np
    >>> to_json({"a": (np.float32(1.5), float("nan")), "b": np.arange(2)})
    {'a': [1.5, None], 'b': [0, 1]}
    """
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # tensors and NumPy arrays/scalars
        return to_json(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)  # e.g. a torch.dtype
