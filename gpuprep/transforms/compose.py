"""Compose: run transforms in order, and save/load a pipeline as a YAML file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigError, short_repr
from ..io.safe_yaml import dump_yaml, load_yaml
from ..records import to_json
from ..validation import check_seed
from .base import Transform, build_transform
from .fusion import apply_fused, fusion_runs
from .random_base import seed_random_transforms

PIPELINE_FORMAT = 1


def _check_pipeline_format(version: Any, where: str) -> None:
    """Refuse a pipeline format number that is not an int from 1 to :data:`PIPELINE_FORMAT`."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"{where}: 'gpuprep_pipeline' must be a format number from 1 to {PIPELINE_FORMAT}, "
                          f"got {short_repr(version)}")
    if version > PIPELINE_FORMAT:
        raise ConfigError(f"{where}: 'gpuprep_pipeline' is format {version}, newer than this gpuprep "
                          f"{__version__} reads (format {PIPELINE_FORMAT}); upgrade gpuprep to load it")


class Compose:
    """Apply a sequence of transforms; each appends its record to the sample's history.

    Parameters
    ----------
    transforms:
        The transforms, applied in order.
    seed:
        Pipeline seed from which random transforms draw their per-sample parameters, so a run
        is reproducible whatever the number of workers or the batch size. None: not seeded.
    fuse:
        Run consecutive spatial transforms as one resampling (default). The result agrees with
        the unfused chain within interpolation tolerance (exactly for crops, pads, flips and
        reorientation) and the history has the same records, each marked ``"fused"`` so that
        :func:`~gpuprep.replay` resamples them together again.

    Example
    -------
    >>> import gpuprep as gp
    >>> pipeline = gp.Compose([gp.Orientation("image", "RAS")], seed=0)
    >>> gp.Compose.from_yaml(pipeline.to_yaml()).transforms
    [Orientation(keys='image', axcodes='RAS', allow_missing_keys=False)]
    """

    def __init__(self, transforms: Sequence[Transform], seed: int | None = None, fuse: bool = True) -> None:
        transforms = list(transforms)
        for position, transform in enumerate(transforms):
            if not callable(transform):
                raise ConfigError(
                    f"Compose: transforms[{position}] must be a transform, got {type(transform).__name__}"
                )
        self.transforms = transforms
        self.seed = check_seed("Compose", seed)
        self.fuse = bool(fuse)
        self.epoch = 0
        seed_random_transforms(self.transforms, seed, self.epoch)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with the seed and sample index, determines random parameters."""
        self.epoch = int(epoch)
        seed_random_transforms(self.transforms, self.seed, self.epoch)

    def __call__(self, data: Mapping) -> dict:
        """Apply every transform in turn and return the new sample or batch."""
        for run in self._runs():
            data = apply_fused(run, data) if len(run) > 1 else run[0](data)
        return dict(data)

    def _runs(self) -> list[list[Transform]]:
        """The transforms grouped as they are applied: runs of fused spatial steps, every other one alone.

        See :func:`~gpuprep.transforms.fusion.fusion_runs`; without fusion, every transform stands alone.
        """
        return fusion_runs(self.transforms) if self.fuse else [[t] for t in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, index: int) -> Transform:
        return self.transforms[index]

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n], seed={self.seed})"

    # -- pipeline files ----------------------------------------------------------------------

    def get_config(self) -> dict:
        """A JSON/YAML-friendly description from which :meth:`from_config` rebuilds the pipeline."""
        for transform in self.transforms:
            if not isinstance(transform, Transform):
                raise ConfigError(
                    f"Compose: {type(transform).__name__} is not a gpuprep Transform and cannot be saved"
                )
        return {
            "gpuprep_pipeline": PIPELINE_FORMAT,
            "gpuprep_version": __version__,
            "seed": self.seed,
            "epoch": self.epoch,
            "fuse": self.fuse,
            "transforms": [{"name": type(t).__name__, "config": to_json(t.get_config())} for t in self.transforms],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "pipeline config") -> Compose:
        """Rebuild a pipeline from :meth:`get_config` output (e.g. parsed from YAML or a sidecar).

        ``where`` names the source in error messages. A config of a newer ``gpuprep_pipeline``
        format than this version reads is refused (see the versioning policy); one without the
        field is read as the current format.
        """
        if not isinstance(config, Mapping) or "transforms" not in config:
            raise ConfigError(f"pipeline config must be a mapping with a 'transforms' list, got {short_repr(config)}")
        _check_pipeline_format(config.get("gpuprep_pipeline", PIPELINE_FORMAT), where)
        entries = config["transforms"]
        if not isinstance(entries, list):
            raise ConfigError(f"pipeline 'transforms' must be a list, got {type(entries).__name__}")
        transforms = []
        for position, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise ConfigError(f"pipeline transforms[{position}] must have a 'name', got {short_repr(entry)}")
            transforms.append(build_transform(entry["name"], entry.get("config") or {}))
        pipeline = cls(transforms, seed=config.get("seed"), fuse=config.get("fuse", True))
        epoch = config.get("epoch", 0)
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ConfigError(f"pipeline 'epoch' must be a non-negative integer, got {epoch!r}")
        pipeline.set_epoch(epoch)
        return pipeline

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Return the pipeline as YAML text; also write it to ``path`` when given."""
        text = dump_yaml(self.get_config())
        if path is not None:
            from ..io.atomic import atomic_write_bytes

            atomic_write_bytes(Path(path), text.encode())
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> Compose:
        """Load a pipeline from a YAML file path or from YAML text.

        YAML aliases (``*name``) are refused: nested aliases can expand a few hundred bytes
        into billions of values (see :func:`gpuprep.io.safe_yaml.load_yaml`).
        """
        text, what = str(source), "pipeline YAML"
        if isinstance(source, Path) or (len(text) < 4096 and "\n" not in text and Path(text).is_file()):
            text, what = Path(source).read_text(), f"pipeline YAML {source}"
        return cls.from_config(load_yaml(text, what), where=what)
