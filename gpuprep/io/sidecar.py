"""JSON sidecars: what a preprocessed image is and how it was made.

A sidecar sits beside its image with the image's extension replaced by ``.json``
(``sub-01_T1w.nii.gz`` -> ``sub-01_T1w.json``, as in BIDS) and holds::

    {
      "gpuprep_sidecar": 2,
      "gpuprep_version": "0.1.0",
      "created": "2026-01-31T12:00:00+00:00",          # UTC
      "versions": {"python": ..., "torch": ..., "numpy": ..., "nibabel": ..., "SimpleITK": ...},
      "source": "/data/sub-01_T1w.nii.gz",              # or null
      "output": {"filename": ..., "format": ..., "shape": [C, D, H, W], "dtype": ..., "affine": [[...]],
                 "device": "cpu"},                 # where the data were computed
      "history": [record, ...],                          # the sample's full history
      "pipeline": {"gpuprep_pipeline": 1, "seed": null, "epoch": 0, "fuse": false,
                   "transforms": [{"name", "config"}, ...]},  # LoadImage ... SaveImage
      "sample_index": 0,                                 # or null; "patch_index" for a patch
      ...                                                # extra fields given by the caller
    }

``pipeline`` rebuilds and reruns the run that made the image, from the source files to this file
(:func:`gpuprep.rebuild`, ``gpuprep replay SIDECAR.json``): its ``LoadImage`` steps, the
processing steps, and the ``SaveImage`` step that wrote the image. It draws the same random
parameters whatever the steps' positions: each random step's config holds the exact seed of the
stream it drew from (its own seed, the one derived from the Compose seed, or the one drawn for an
unseeded run), so the pipeline-level ``seed`` is null; ``epoch`` and ``sample_index`` are those of
the streams. ``fuse`` says whether consecutive spatial steps were resampled together.
``gp.replay(sample, history)`` repeats the recorded parameters instead of drawing them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigError, ImageReadError
from ..records import to_json
from .atomic import atomic_write_bytes

SIDECAR_FORMAT = 2
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


def pipeline_from_history(history: Sequence[Mapping], save_step: Mapping | None = None) -> dict:
    """Build the :meth:`gpuprep.Compose.from_config` pipeline that reruns a history.

    Every record becomes a step except earlier ``SaveImage`` records (they do not change the
    data); ``save_step``, the config of the ``SaveImage`` that writes the image, comes last. A
    random step gets the seed of the stream it drew from (``record["stream"]["seed"]``).

    Parameters
    ----------
    history:
        The sample's records.
    save_step:
        Constructor arguments of the ``SaveImage`` writing the image, or None.

    Example
    -------
    >>> records = [{"name": "LoadImage", "config": {}},
    ...            {"name": "RandFlip", "config": {"seed": None}, "stream": {"seed": 7, "epoch": 2, "sample_index": 0}}]
    >>> pipeline = pipeline_from_history(records)
    >>> pipeline["transforms"][1], pipeline["epoch"]
    ({'name': 'RandFlip', 'config': {'seed': 7}}, 2)
    """
    steps = [record for record in history if record.get("name") != "SaveImage"]
    transforms = [{"name": record["name"], "config": _rerun_config(record)} for record in steps]
    if save_step is not None:
        transforms.append({"name": "SaveImage", "config": to_json(save_step)})
    streams = [record["stream"] for record in steps if record.get("stream")]
    return {
        "gpuprep_pipeline": 1,
        "seed": None,
        "epoch": streams[0]["epoch"] if streams else 0,
        "fuse": any(record.get("fused") for record in steps),
        "transforms": transforms,
    }


def _rerun_config(record: Mapping) -> dict:
    config = to_json(record.get("config") or {})
    stream = record.get("stream")
    if stream and "seed" in config:
        config["seed"] = stream["seed"]
    return config


def stream_indices(history: Sequence[Mapping]) -> dict:
    """``{"sample_index": i}`` (and ``"patch_index"``) of the streams the random steps drew from; empty if none.

    Example
    -------
    >>> stream_indices([{"name": "RandFlip", "stream": {"seed": 7, "epoch": 0, "sample_index": 3}}])
    {'sample_index': 3}
    """
    for record in history:
        stream = record.get("stream")
        if stream:
            return {k: stream[k] for k in ("sample_index", "patch_index") if k in stream}
    return {}


def make_sidecar(
    image_path: str | os.PathLike,
    *,
    output: Mapping[str, Any],
    history: Sequence[Mapping] | None = None,
    source: str | None = None,
    extra: Mapping[str, Any] | None = None,
    save_step: Mapping[str, Any] | None = None,
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
    save_step:
        Constructor arguments of the ``SaveImage`` writing the image (last step of ``pipeline``).
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
        "pipeline": pipeline_from_history(history, save_step),
        "sample_index": None,
        **stream_indices(history),
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
    >>> [type(t).__name__ for t in gp.Compose.from_config(sidecar["pipeline"]).transforms]
    ['LoadImage', 'Orientation', 'SaveImage']
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
