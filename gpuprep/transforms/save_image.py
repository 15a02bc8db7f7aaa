"""SaveImage: the last step of a file-to-file pipeline, which never loses a file.

``SaveImage`` writes tensors to files with a JSON sidecar holding the sample's history, after
checking every target (:mod:`gpuprep.io.outputs`), and records the output paths in the history.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, OutputExistsError, TransformError
from ..io.outputs import check_output_file, make_folders, remove_empty_folders
from ..io.sidecar import sidecar_path, strip_image_extension
from ..io.writer import WRITE_FORMATS, write_format, write_image
from ..sample import HISTORY_KEY, meta_key
from ..validation import check_bool
from .base import Transform

_PathLike = (str, os.PathLike)


class SaveImage(Transform):
    """Write the images of ``keys`` to ``output_dir`` with a JSON sidecar; return the sample unchanged.

    Each image goes to ``output_dir/<source stem><suffix><output_ext>``, the stem being the
    source file name without its image extension (the key when there is no source file). When
    two keys of a sample would share a name, the key that was loaded from that file keeps it and
    the other (e.g. a mask derived from the image) gets ``_<key>`` appended. NIfTI-2 sources are
    written as NIfTI-2 and the NIfTI qform/sform codes of the source are kept (an sform code
    of 0 becomes the qform code, or 2, as the sform is what stores the affine exactly). The
    sidecar (see :mod:`gpuprep.io.sidecar`) holds the sample's history; the SaveImage record,
    with the output paths, is appended to the returned sample's history. Batches are written
    sample by sample.

    No output is lost: every target of a call (images and sidecars) is checked before anything
    is written. Refused are two outputs sharing a path, an output over its own source, a path
    this SaveImage already wrote from another source file in an earlier call, and an existing
    file it did not write, unless ``overwrite=True``. A JSON file that gpuprep did not write
    (e.g. an input's BIDS sidecar ``sub-01_T1w.json``) is never replaced. Files this SaveImage
    wrote from the same source file and key may be written again (a pipeline run twice); a
    sample without a source file is never taken for an earlier one.

    Parameters
    ----------
    keys:
        Image keys to write.
    output_dir:
        Folder for the files; created when missing (and removed again if a failed call left it empty).
    suffix:
        Added to the stem, e.g. ``"_preproc"``.
    output_ext:
        ``.nii.gz`` (default), ``.nii``, ``.mgz``, ``.mgh``, ``.nrrd`` or ``.mha``.
    sidecar:
        Also write the JSON sidecar.
    overwrite:
        Replace existing images and gpuprep sidecars (e.g. the outputs of an earlier run). The
        default, False, raises :class:`~gpuprep.errors.OutputExistsError` (a ``FileExistsError``)
        naming the file, before anything is written.
    allow_missing_keys:
        Skip keys that are absent instead of raising.

    Raises
    ------
    TransformError
        When an output path would be the source file itself, or two outputs share a path.
    OutputExistsError
        When a target exists and may not be replaced (see above).

    Example
    -------
    >>> import gpuprep as gp, pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> pipeline = gp.Compose([gp.LoadImage("image"), gp.Orientation("image", "RAS"),
    ...                        gp.SaveImage("image", out, suffix="_ras")])
    >>> _ = pipeline({"image": str(gp.data.sample_brain_paths()["image"])})
    >>> sorted(p.name for p in out.iterdir())
    ['sample_t1w_ras.json', 'sample_t1w_ras.nii.gz']
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        output_dir: str | os.PathLike,
        suffix: str = "",
        output_ext: str = ".nii.gz",
        sidecar: bool = True,
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not isinstance(output_dir, _PathLike) or not os.fspath(output_dir):
            raise ConfigError(f"SaveImage: output_dir must be a non-empty path, got {output_dir!r}")
        if not isinstance(suffix, str) or "/" in suffix or os.sep in suffix:
            raise ConfigError(f"SaveImage: suffix must be a string without path separators, got {suffix!r}")
        ext = output_ext
        if isinstance(ext, str) and not ext.startswith("."):
            ext = f".{ext}"
        if not isinstance(ext, str) or ext.lower() not in WRITE_FORMATS:
            raise ConfigError(
                f"SaveImage: output_ext must be one of {list(WRITE_FORMATS)}, got {output_ext!r}"
            )
        check_bool("SaveImage", "sidecar", sidecar)
        check_bool("SaveImage", "overwrite", overwrite)
        self.output_dir = Path(output_dir)
        self.suffix = suffix
        self.output_ext = ext
        self.sidecar = sidecar
        self.overwrite = overwrite
        # Resolved path -> (source file, key) of every file this instance wrote.
        self._written: dict[Path, tuple[str, str]] = {}

    def get_config(self) -> dict:
        """Constructor arguments, with the folder as a string so the config survives YAML."""
        return {**super().get_config(), "output_dir": os.fspath(self.output_dir)}

    def make_params(self, batch: dict, keys: list[str]) -> list[dict]:
        """Decide the output paths: ``{key: {"filename": path, "sidecar": path or None}}`` per sample."""
        params = []
        for index in range(len(batch[keys[0]])):
            loaded = _loaded_keys(batch, index)
            # Keys read from a file claim their file's name first, then the others in order.
            ordered = sorted(keys, key=lambda k: k not in loaded)
            used: set[str] = set()
            entry = {}
            for key in ordered:
                stem = _stem(_field(batch, key, "filename", index)) or key
                name = f"{stem}_{key}" if stem in used else stem
                used.add(name)
                target = self.output_dir / f"{name}{self.suffix}{self.output_ext}"
                entry[key] = {
                    "filename": os.fspath(target),
                    "sidecar": os.fspath(sidecar_path(target)) if self.sidecar else None,
                }
            params.append({key: entry[key] for key in keys})
        return params

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        """Write every sample's images to the paths in ``params``; the data are returned untouched."""
        self._check_targets(batch, keys, params)
        created = make_folders(self.output_dir)
        histories = batch.get(HISTORY_KEY) or [[] for _ in params]
        nifti = write_format(self.output_ext) == "nifti"
        try:
            for index, entry in enumerate(params):
                for key in keys:
                    codes = _nifti_options(batch, key, index) if nifti else {}
                    source = _field(batch, key, "filename", index)
                    write_image(
                        entry[key]["filename"],
                        batch[key][index],
                        batch[meta_key(key)]["affine"][index],
                        history=histories[index],
                        sidecar=self.sidecar,
                        source=source,
                        save_step=self.get_config(),
                        overwrite=True,  # checked above, with this instance's own files in mind
                        **codes,
                    )
                    if source is not None:
                        for path in (entry[key]["filename"], entry[key]["sidecar"]):
                            if path is not None:
                                self._written[Path(path).resolve()] = (_same_file(source), key)
        except BaseException:
            remove_empty_folders(created)
            raise
        return batch

    def _check_targets(self, batch: dict, keys: list[str], params: list[dict]) -> None:
        seen: dict[Path, tuple[int, str]] = {}
        for index, entry in enumerate(params):
            for key in keys:
                source = _field(batch, key, "filename", index)
                target = Path(entry[key]["filename"])
                if source is not None and target.resolve() == Path(source).resolve():
                    raise TransformError(
                        f"SaveImage: refusing to write {target} over its own source file; "
                        "choose another output_dir, suffix or output_ext"
                    )
                identity = None if source is None else (_same_file(source), key)
                for path in (entry[key]["filename"], entry[key]["sidecar"]):
                    if path is None:
                        continue
                    resolved = Path(path).resolve()
                    if resolved in seen:
                        raise TransformError(
                            f"SaveImage: sample {seen[resolved][0]} key {seen[resolved][1]!r} and sample {index} "
                            f"key {key!r} would both be written to {path}; give the sources distinct names"
                        )
                    seen[resolved] = (index, key)
                    self._check_target(Path(path), identity, sidecar=path == entry[key]["sidecar"])

    def _check_target(self, path: Path, identity: tuple[str, str] | None, sidecar: bool) -> None:
        """Refuse ``path`` unless it is new, was written by this instance for ``identity``, or may be replaced."""
        earlier = self._written.get(path.resolve())
        if earlier is not None and earlier != identity:
            raise TransformError(
                f"SaveImage: {path} was already written in this run from {earlier[0]} (key {earlier[1]!r}); "
                "sources with the same file name would overwrite each other; save them to different "
                "output_dir folders or with different suffixes"
            )
        try:
            check_output_file(path, overwrite=self.overwrite or earlier is not None, sidecar=sidecar)
        except OutputExistsError as error:
            raise OutputExistsError(f"SaveImage: {error}") from None


def _loaded_keys(batch: dict, index: int) -> set[str]:
    """Keys that a LoadImage step of sample ``index``'s history read from a file."""
    histories = batch.get(HISTORY_KEY) or []
    history = histories[index] if index < len(histories) else []
    return {key for record in history if record.get("name") == "LoadImage" for key in record.get("params") or {}}


def _same_file(path: str | os.PathLike) -> str:
    return os.fspath(Path(path).resolve())


def _field(batch: dict, key: str, name: str, index: int) -> Any:
    """Field ``name`` of sample ``index`` in the batched metadata of ``key`` (None if absent)."""
    values = batch.get(meta_key(key), {}).get(name)
    return None if values is None else values[index]


def _nifti_options(batch: dict, key: str, index: int) -> dict:
    qform = _field(batch, key, "qform_code", index)
    sform = _field(batch, key, "sform_code", index)
    return {
        "nifti_version": 2 if _field(batch, key, "format", index) == "nifti2" else 1,
        "qform_code": qform,
        "sform_code": sform or qform or None,
    }


def _stem(filename: str | None) -> str | None:
    return None if filename is None else strip_image_extension(Path(filename).name)
