"""Rebuild the run that wrote an image from its JSON sidecar, to rerun it to an identical file.

The sidecar's ``pipeline`` (see :mod:`gpuprep.io.sidecar`) lists the ``LoadImage`` steps, the
processing steps (random ones with the exact seed of the stream they drew from) and the
``SaveImage`` step; its history names the source files and the fused resampling runs, and the
random records name the epoch and sample index of their streams. :func:`rebuild` turns these
into a :class:`~gpuprep.Compose` and the input sample, so that running one on the other draws
the same parameters and writes the same voxels and affine. ``gpuprep replay`` is its command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._version import __version__
from ..errors import ConfigError, TransformError
from ..io.sidecar import SIDECAR_FORMAT, read_sidecar, sidecar_path
from ..random.seeding import PATCH_INDEX_KEY, SAMPLE_INDEX_KEY
from ..records import to_json
from ..sample import get_history, image_keys
from .compose import Compose
from .io import LoadImage, SaveImage

#: The record fields that must agree between a run and its rerun (configs may differ by the seed).
_DRAWN_FIELDS = ("name", "keys", "params", "fused")


@dataclass
class RebuiltRun:
    """A pipeline rebuilt from a sidecar and the sample to run it on.

    Attributes
    ----------
    pipeline:
        The rebuilt :class:`~gpuprep.Compose`, from ``LoadImage`` to ``SaveImage``.
    inputs:
        ``{key: source path}``: the recorded source files, or those given instead.
    sample_index:
        The sample index the random steps drew their streams with (None: no random step).
    patch_index:
        The patch index of those streams, for a patch (else None).
    history:
        The recorded history, to compare a rerun's draws with (:meth:`differences`).
    where:
        The sidecar's path (for messages).
    recorded_inputs:
        Whether ``inputs`` are the recorded source files (then a rerun must draw the same).
    device:
        The device the recorded run computed on (``"cpu"``, ``"cuda:0"``; None if not recorded).
    """

    pipeline: Compose
    inputs: dict[str, str]
    sample_index: int | None = None
    patch_index: int | None = None
    history: list = field(default_factory=list, repr=False)
    where: str = "sidecar"
    recorded_inputs: bool = True
    device: str | None = None

    def sample(self) -> dict:
        """The input sample: the source paths, and the stream indices of the original run."""
        sample: dict = dict(self.inputs)
        if self.sample_index is not None:
            sample[SAMPLE_INDEX_KEY] = self.sample_index
        if self.patch_index is not None:
            sample[PATCH_INDEX_KEY] = self.patch_index
        return sample

    def run(self, device: str | torch.device | None = None) -> dict:
        """Run the rebuilt pipeline on :meth:`sample`, which writes the output file(s); return the sample.

        The images are moved to ``device`` (default: the CPU) once loaded. On the recorded source
        files the rerun's history is checked against the recorded one before anything is written:
        a rerun that would differ raises :class:`~gpuprep.errors.TransformError`.
        """
        transforms = list(self.pipeline.transforms)
        save = transforms[-1:] if transforms and isinstance(transforms[-1], SaveImage) else []
        steps = transforms[: len(transforms) - len(save)]
        loads = next((i for i, t in enumerate(steps) if not isinstance(t, LoadImage)), len(steps))
        out = Compose(steps[:loads])(self.sample())
        if device is not None:
            out = {**out, **{key: out[key].to(device) for key in image_keys(out)}}
        processing = Compose(steps[loads:], seed=self.pipeline.seed, fuse=self.pipeline.fuse)
        processing.set_epoch(self.pipeline.epoch)
        out = processing(out)
        found = self.differences(get_history(out)) if self.recorded_inputs else []
        if found:
            raise TransformError(f"{self.where}: the rerun differs from the recorded run at {found[0]:.400}")
        return save[0](out) if save else out

    def differences(self, history: Sequence[Mapping]) -> list[str]:
        """Where a rerun's ``history`` differs from the recorded one (IO records left out); empty if nowhere."""
        recorded, rerun = _drawn(self.history), _drawn(history)
        found = [f"record {i} ({a.get('name')}): recorded {a}, rerun {b}"
                 for i, (a, b) in enumerate(zip(recorded, rerun)) if a != b]
        if len(recorded) != len(rerun):
            found.append(f"{len(recorded)} records recorded, {len(rerun)} in the rerun")
        return found


def rebuild(
    sidecar: str | os.PathLike | Mapping,
    *,
    inputs: Mapping[str, str | os.PathLike] | None = None,
    output_dir: str | os.PathLike | None = None,
    overwrite: bool | None = None,
) -> RebuiltRun:
    """Rebuild the pipeline that wrote an image from its sidecar, with the sample to rerun it on.

    Parameters
    ----------
    sidecar:
        The sidecar (``.json``) path, the image path beside it, or the sidecar dict.
    inputs:
        ``{key: path}`` to read instead of the recorded source files (keys of ``LoadImage`` steps).
    output_dir:
        Folder for the outputs instead of the recorded one.
    overwrite:
        Whether ``SaveImage`` may replace existing files; None keeps the recorded choice.

    Returns
    -------
    RebuiltRun
        ``run = gp.rebuild(path); out = run.run()`` writes the identical file(s).

    Raises
    ------
    ConfigError
        When the sidecar is from an older format, does not start from files (no ``LoadImage``),
        mixes fused and unfused spatial runs, or ``inputs`` names a key that was not loaded.
    FileNotFoundError
        When the sidecar or a source file is missing.

    Example
    -------
    >>> import gpuprep as gp, tempfile
    >>> first, second = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> pipeline = gp.Compose([gp.LoadImage("image"), gp.RandFlip("image", p=0.5), gp.SaveImage("image", first)])
    >>> out = pipeline({"image": str(gp.data.sample_brain_paths()["image"])})
    >>> run = gp.rebuild(gp.get_history(out)[-1]["params"]["image"]["sidecar"], output_dir=second)
    >>> rerun = run.run()
    >>> run.differences(gp.get_history(rerun)), gp.get_history(rerun)[1]["params"] == gp.get_history(out)[1]["params"]
    ([], True)
    """
    where, sidecar = _load(sidecar)
    pipeline_config = sidecar.get("pipeline")
    if not isinstance(pipeline_config, Mapping) or not isinstance(pipeline_config.get("transforms"), list):
        raise ConfigError(f"{where}: the sidecar has no 'pipeline' with a 'transforms' list")
    config = to_json(pipeline_config)
    for step in config["transforms"]:
        if step.get("name") == "SaveImage":
            if output_dir is not None:
                step["config"]["output_dir"] = os.fspath(output_dir)
            if overwrite is not None:
                step["config"]["overwrite"] = bool(overwrite)
    pipeline = Compose.from_config(config, where=f"{where} 'pipeline'")
    history = list(sidecar.get("history") or [])
    _check_runs(pipeline, history, where)
    return RebuiltRun(pipeline, _inputs(history, inputs, where), sidecar.get("sample_index"),
                      sidecar.get("patch_index"), history, where, recorded_inputs=not inputs,
                      device=(sidecar.get("output") or {}).get("device"))


def _load(sidecar) -> tuple[str, dict]:
    if isinstance(sidecar, Mapping):
        where, content = "sidecar", dict(sidecar)
    else:
        path = Path(sidecar)
        where = str(path if path.name.lower().endswith(".json") else sidecar_path(path))
        content = read_sidecar(path)
        if not isinstance(content, dict):
            raise ConfigError(f"{where}: a sidecar must be a JSON object, got {type(content).__name__}")
    version = content.get("gpuprep_sidecar")
    if version is None:
        raise ConfigError(f"{where}: not a gpuprep sidecar (it has no 'gpuprep_sidecar' field)")
    if not isinstance(version, int) or version < SIDECAR_FORMAT:
        raise ConfigError(
            f"{where}: sidecar format {version!r} cannot be rerun (format {SIDECAR_FORMAT} or later records "
            "the IO steps, the random streams and the fused runs); use gp.replay(sample, sidecar['history'])"
        )
    if version > SIDECAR_FORMAT:
        raise ConfigError(f"{where}: sidecar format {version} is newer than this gpuprep {__version__} reads "
                          f"(format {SIDECAR_FORMAT}); upgrade gpuprep to rerun it")
    return where, content


def _inputs(history: list, given: Mapping | None, where: str) -> dict[str, str]:
    """The source file of each loaded key (from the ``LoadImage`` records), with ``given`` paths instead."""
    recorded: dict[str, str] = {}
    for record in history:
        if record.get("name") == "LoadImage":
            recorded.update({key: entry["filename"] for key, entry in record.get("params", {}).items()})
    if not recorded:
        raise ConfigError(f"{where}: the run did not start from files (no LoadImage record), so it cannot be rerun")
    unknown = sorted(set(given or {}) - set(recorded))
    if unknown:
        raise ConfigError(f"{where}: inputs {unknown} were not loaded by the run; its keys are {sorted(recorded)}")
    inputs = {**recorded, **{key: os.fspath(path) for key, path in (given or {}).items()}}
    for key, path in inputs.items():
        if not os.path.exists(path):
            raise FileNotFoundError(f"source of key {key!r} not found: {path} (named in {where})")
    return inputs


def _check_runs(pipeline: Compose, history: list, where: str) -> None:
    """Refuse a history whose resampling runs the rebuilt Compose would not repeat (fused and unfused mixed)."""
    recorded, position = [], 0
    records = [r for r in history if r.get("name") != "SaveImage"]
    while position < len(records):
        count = (records[position].get("fused") or {}).get("count", 1)
        recorded.append(count)
        position += count
    rebuilt = [len(run) for run in pipeline._runs()]
    if pipeline.transforms and isinstance(pipeline.transforms[-1], SaveImage):
        rebuilt = rebuilt[:-1]
    if rebuilt != recorded:
        raise ConfigError(
            f"{where}: the run resampled its spatial steps in groups of {recorded}, which a Compose with "
            f"fuse={pipeline.fuse} would do as {rebuilt}; replay its history instead (gp.replay)"
        )


def _drawn(history: Sequence[Mapping]) -> list[dict]:
    return [{k: to_json(r.get(k)) for k in _DRAWN_FIELDS}
            for r in history if r.get("name") not in ("LoadImage", "SaveImage")]
