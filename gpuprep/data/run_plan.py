"""The plan of a dataset run: the pipeline as it will run, its hash, and where every output goes.

The pipeline file must not write files itself (no ``SaveImage``: the run writes the outputs); when
it does not start with ``LoadImage``, one is put in front that reads every image key of the
records, the keys named like label maps (``label``, ``seg``, ``mask``, ``dseg``..., alone or after
``_``) as labels. Every key a step works on must be one the records have or an earlier step makes
(a ``*_key`` argument, e.g. ``ForegroundMask(mask_key="foreground")``), unless the step allows
missing keys. The **pipeline hash** is the SHA-256 of the pipeline's configuration (with its
``LoadImage`` step, without the gpuprep version), so reformatting the YAML keeps it and changing a
step changes it.

Outputs mirror the inputs: the record's primary file ``<root>/sub-01/anat/sub-01_T1w.nii.gz`` gives
``<output>/sub-01/anat/sub-01_T1w.nii.gz`` (always ``.nii.gz``) and the other keys go beside it
(named as :class:`~gpuprep.SaveImage` names them: ``sub-01_T1w_foreground.nii.gz`` for a mask made
from the image), each with its JSON sidecar. Refused before any work: an output folder that holds
an input (an output could then replace it), an output folder inside a scanned folder (a later
run would read the outputs as inputs) and two inputs whose outputs would share a path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io.sidecar import strip_image_extension
from .records import is_image_path
from .run_inputs import RunInputs

#: Record keys read as label maps when the pipeline has no LoadImage step of its own.
LABEL_NAME = re.compile(r"(^|_)(label|labels|seg|dseg|aseg|parc|mask)$")
OUTPUT_EXTENSION = ".nii.gz"


def load_run_pipeline(source: str | os.PathLike, record: Mapping[str, Any]) -> tuple[str, str, set[str]]:
    """Read the pipeline file and return the YAML of the pipeline that runs, its hash and the keys its steps make.

    Parameters
    ----------
    source:
        The pipeline YAML file (:meth:`gpuprep.Compose.to_yaml`).
    record:
        One record of the run: its keys are what the pipeline may use.

    Example
    -------
    >>> import gpuprep as gp, tempfile
    >>> path = Path(tempfile.mkdtemp()) / "p.yaml"
    >>> _ = gp.Compose([gp.ForegroundMask("image", mask_key="head")]).to_yaml(path)
    >>> text, digest, made = load_run_pipeline(path, {"image": "a.nii.gz"})
    >>> [t["name"] for t in gp.Compose.from_yaml(text).get_config()["transforms"]], len(digest), made
    (['LoadImage', 'ForegroundMask'], 64, {'head'})
    """
    from ..transforms.compose import Compose
    from ..transforms.io import LoadImage

    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"PIPELINE {path}: no such file (a pipeline YAML written by Compose.to_yaml)")
    pipeline = Compose.from_yaml(path)
    names = [type(t).__name__ for t in pipeline.transforms]
    if "SaveImage" in names:
        raise ConfigError(f"PIPELINE {path}: step {names.index('SaveImage')} is SaveImage; gpuprep run writes the "
                          "outputs itself (under --output, mirroring the inputs), so remove it")
    prepended = not names or names[0] != "LoadImage"
    if prepended:
        keys = [k for k, v in record.items() if is_image_path(v)]
        labels = [k for k in keys if LABEL_NAME.search(k)]
        pipeline = Compose([LoadImage(keys, labels=labels or None), *pipeline.transforms], seed=pipeline.seed,
                           fuse=pipeline.fuse)
    made = _check_keys(pipeline.transforms[int(prepended):], set(record), path)
    config = pipeline.get_config()
    config.pop("gpuprep_version", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return pipeline.to_yaml(), digest, made


def _check_keys(transforms: Iterable[Any], available: set[str], path: Path) -> set[str]:
    """Refuse a step that uses a key neither the records nor an earlier step have; return the keys the steps make."""
    have = set(available)
    for position, transform in enumerate(transforms):
        keys = getattr(transform, "keys", None)
        if isinstance(keys, list) and not getattr(transform, "allow_missing_keys", False):
            missing = [k for k in keys if isinstance(k, str) and k not in have]
            if missing:
                raise ConfigError(
                    f"PIPELINE {path}: step {position} {type(transform).__name__} uses key(s) {missing}, which the "
                    f"inputs do not have (their keys: {sorted(available)}); rename the keys in the pipeline, or "
                    "the columns of the table")
        config = transform.get_config() if hasattr(transform, "get_config") else {}
        have |= {v for n, v in config.items() if n.endswith("_key") and isinstance(v, str) and n != "source_key"}
    return have - available


def plan_outputs(inputs: RunInputs, output: str | os.PathLike, made_keys: Iterable[str] = ()) -> list[Path]:
    """Check the output folder against the inputs and return each record's output folder (see the module docstring).

    Parameters
    ----------
    inputs:
        The run's records (:func:`~gpuprep.data.run_inputs.resolve_inputs`).
    output:
        The output folder.
    made_keys:
        Keys the pipeline makes (written beside the primary output as ``<stem>_<key>``).

    Example
    -------
    >>> from gpuprep.data.run_inputs import RunInputs
    >>> found = RunInputs([{"image": "/d/a/x.nii"}, {"image": "/d/b/x.nii"}], Path("/d"), "image", "files")
    >>> [p.as_posix() for p in plan_outputs(found, "/out")]
    ['/out/a', '/out/b']
    """
    output = Path(os.path.abspath(output))
    real_output = Path(os.path.realpath(output))
    files = {os.path.realpath(v) for r in inputs.records for v in r.values() if is_image_path(v)}
    inside = sorted(f for f in files if Path(f).is_relative_to(real_output))
    if inside:
        raise ConfigError(f"--output {output}: it holds the input {inside[0]}; an output could replace an input, "
                          "so choose an output folder that holds no input")
    if inputs.kind == "folder" and real_output.is_relative_to(os.path.realpath(inputs.root)):
        raise ConfigError(f"--output {output} is inside the scanned INPUT folder {inputs.root}: a later run would "
                          "read the outputs as inputs; choose a folder outside it")
    claimed: dict[Path, str] = {}
    folders = []
    for record in inputs.records:
        relative = Path(inputs.relative(record))
        folder = output / relative.parent
        folders.append(folder)
        for name in _names(record, inputs.primary, made_keys):
            target = folder / name
            source = record[inputs.primary]
            if target in claimed and claimed[target] != source:
                raise ConfigError(
                    f"INPUT {claimed[target]} and {source} would both be written to {target} (outputs mirror the "
                    f"inputs' paths relative to {inputs.root}, as {OUTPUT_EXTENSION}); rename one of them")
            claimed[target] = source
    return folders


def _names(record: Mapping[str, Any], primary: str, made_keys: Iterable[str]) -> list[str]:
    """The file names a record's outputs may take: the primary stem, other loaded files' stems, ``<stem>_<key>``."""
    stem = strip_image_extension(Path(record[primary]).name)
    loaded = [strip_image_extension(Path(v).name) for k, v in record.items() if k != primary and is_image_path(v)]
    keys = [k for k in record if k != primary and is_image_path(record[k])] + sorted(made_keys)
    return [f"{name}{OUTPUT_EXTENSION}" for name in [stem, *loaded, *(f"{stem}_{k}" for k in keys)]]
