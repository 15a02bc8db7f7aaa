"""LoadImage and SaveImage: the first and last steps of a file-to-file pipeline.

``LoadImage`` turns paths into tensors with metadata; ``SaveImage`` writes tensors to files
with a JSON sidecar holding the sample's history. Both record what they did (file names,
formats, output paths) in the history like every other transform.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, OutputExistsError, TransformError
from ..io.dicom import check_dicom_check
from ..io.outputs import check_output_file, make_folders, remove_empty_folders
from ..io.reader import NONFINITE_POLICIES, dtype_name, read_image, resolve_dtype
from ..io.sidecar import sidecar_path, strip_image_extension
from ..io.writer import WRITE_FORMATS, write_format, write_image
from ..sample import HISTORY_KEY, IMAGE, LABEL, collate, decollate, meta_key
from .base import Transform

_PathLike = (str, os.PathLike)


class LoadImage(Transform):
    """Read the files named by ``keys`` into tensors ``[C, D, H, W]`` with metadata.

    A sample whose keys hold paths gives tensors and ``f"{key}_meta"`` dicts (see
    :func:`gpuprep.io.read_image`); a batch whose keys hold lists of paths gives stacked tensors
    ``[B, C, D, H, W]`` (all files of a key must have the same shape). The history records, per
    sample and key, the file name, format and number of replaced non-finite voxels.

    Every key gets a **kind** in its metadata (see :func:`gpuprep.get_kind`): the keys named by
    ``labels`` are label maps, all others intensity images. Transforms follow the kind, never
    the dtype, so an int16 CT or MRI is interpolated linearly and normalised like any image.

    Parameters
    ----------
    keys:
        Keys whose values are paths.
    labels:
        The label-map keys: one key, a list of keys (a subset of ``keys``), or True for all keys;
        None (default) means none. Label keys keep the file's integer dtype; a label file stored
        as floating point is cast to the smallest integer dtype that holds its values (uint8,
        int16, int32, int64) when all of them are whole numbers, and refused otherwise.
    dtype:
        Cast to this dtype (a ``torch.dtype`` or a name such as ``"float32"``), or a dict from
        key to dtype. Keys without one: intensity images load as float32 (as in MONAI), label
        maps as described under ``labels``.
    nonfinite:
        ``"error"``, ``"zero"`` or ``"keep"``: what to do with NaN/Inf voxels (see
        :func:`~gpuprep.io.read_image`).
    allow_missing_keys:
        Skip keys that are absent instead of raising.
    dicom_check:
        ``"error"`` or ``"warn"``: what to do with a DICOM series whose slices are not evenly
        stacked (see :func:`~gpuprep.io.read_image`).

    Example
    -------
    >>> import gpuprep as gp
    >>> paths = gp.data.sample_brain_paths()
    >>> load = gp.LoadImage(["image", "label"], labels="label")
    >>> sample = load({"image": str(paths["image"]), "label": str(paths["label"])})
    >>> sample["image"].dtype, sample["label"].dtype, gp.get_kind(sample, "label")
    (torch.float32, torch.uint8, 'label')
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        dtype: Any = None,
        nonfinite: str = "error",
        allow_missing_keys: bool = False,
        labels: str | Sequence[str] | bool | None = None,
        dicom_check: str = "error",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.labels = _label_keys(labels, self.keys)
        self.dicom_check = check_dicom_check(dicom_check, "LoadImage")
        if nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"LoadImage: nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.nonfinite = nonfinite
        if isinstance(dtype, Mapping):
            unknown = sorted(set(dtype) - set(self.keys))
            if unknown:
                raise ConfigError(f"LoadImage: dtype has keys {unknown} that are not in keys {self.keys}")
            self.dtypes = {k: resolve_dtype(dtype.get(k), f"LoadImage: dtype[{k!r}]") for k in self.keys}
            self._dtype_config: Any = {k: dtype_name(v) for k, v in self.dtypes.items() if k in dtype}
        else:
            resolved = resolve_dtype(dtype, "LoadImage: dtype")
            self.dtypes = dict.fromkeys(self.keys, resolved)
            self._dtype_config = dtype_name(resolved)

    def get_config(self) -> dict:
        """Constructor arguments, with dtypes as names so the config survives YAML."""
        return {**super().get_config(), "dtype": self._dtype_config}

    def is_single(self, data: Mapping, keys: list[str]) -> bool:
        """A path is one sample; a list of paths is a batch (all keys must agree)."""
        sizes = {}
        for key in keys:
            value = data[key]
            if isinstance(value, _PathLike):
                sizes[key] = None
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, _PathLike) for v in value):
                sizes[key] = len(value)
            else:
                shown = repr(value)
                if isinstance(value, torch.Tensor):
                    shown = f"a tensor of shape {tuple(value.shape)}"
                raise TransformError(
                    f"LoadImage: key {key!r} must hold a path or a non-empty list of paths, got {shown:.200}"
                )
        if len(set(sizes.values())) > 1:
            found = {k: "one path" if n is None else f"{n} paths" for k, n in sizes.items()}
            raise TransformError(
                f"LoadImage: keys must all hold one path or lists of the same length, got {found}"
            )
        return next(iter(sizes.values())) is None

    def __call__(self, data: Mapping) -> dict:
        """Load the files of a sample (paths) or a batch (lists of paths); return a new dict."""
        batch, single, keys = self._prepare(data)
        if not keys:
            return dict(data)
        out, params = self._load(batch, keys)
        out = self._record(out, keys, params)
        return decollate(out)[0] if single else out

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        """Load the files again (used by :meth:`replay`; the recorded params are informative)."""
        return self._load(batch, keys)[0]

    def _load(self, batch: dict, keys: list[str]) -> tuple[dict, list[dict]]:
        params: list[dict] = [{} for _ in batch[keys[0]]]
        out = dict(batch)
        for key in keys:
            kind = LABEL if key in self.labels else IMAGE
            dtype = self.dtypes[key]
            if dtype is None and kind == IMAGE:
                dtype = torch.float32
            loaded = [read_image(p, dtype=dtype, nonfinite=self.nonfinite, dicom_check=self.dicom_check)
                      for p in batch[key]]
            if dtype is None:  # a label map without an explicit dtype: integers
                loaded = [(_as_label_map(data, meta["filename"]), meta) for data, meta in loaded]
            loaded = [(data, {**meta, "kind": kind}) for data, meta in loaded]
            shapes = {meta["filename"]: tuple(data.shape) for data, meta in loaded}
            if len(set(shapes.values())) > 1:
                raise TransformError(
                    f"LoadImage: the files of key {key!r} in this batch have different shapes {shapes}; "
                    "load them one at a time, or crop/pad/resample them to a common shape before batching"
                )
            common = functools.reduce(torch.promote_types, [data.dtype for data, _ in loaded])
            tensors = [data.to(common) for data, _ in loaded]  # label files of one batch may differ
            out[key] = tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)
            out[meta_key(key)] = collate([meta for _, meta in loaded])
            for index, (_, meta) in enumerate(loaded):
                params[index][key] = {
                    "filename": meta["filename"],
                    "format": meta["format"],
                    "nonfinite_replaced": meta["nonfinite_replaced"],
                }
        return out, params


def _label_keys(labels: Any, keys: list[str]) -> list[str]:
    """Validate ``LoadImage(labels=...)``; return the label keys."""
    if labels is None or labels is False:
        return []
    if labels is True:
        return list(keys)
    names = [labels] if isinstance(labels, str) else labels
    if not isinstance(names, (list, tuple)) or not all(isinstance(k, str) and k for k in names):
        raise ConfigError(f"LoadImage: labels must be a key, a list of keys or True, got {labels!r:.200}")
    unknown = [k for k in names if k not in keys]
    if unknown:
        raise ConfigError(f"LoadImage: labels {unknown} are not among keys {keys}; labels must be a subset of keys")
    return list(names)


#: Integer dtypes a floating-point label file may become, smallest first.
_LABEL_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def _as_label_map(data: torch.Tensor, filename: str | None) -> torch.Tensor:
    """A label map read from a file: integers as they are; floats cast to the smallest integer dtype that fits.

    Example
    -------
    >>> _as_label_map(torch.tensor([0.0, 2.0, 300.0]), "seg.nii.gz").dtype
    torch.int16
    """
    if not data.is_floating_point():
        return data
    whole = torch.isfinite(data) & (data == data.round())
    if not bool(whole.all()):
        example = data[~whole].flatten()[0].item()
        raise TransformError(
            f"LoadImage: {filename} is declared a label map (labels=...) but holds values that are not whole "
            f"numbers, e.g. {example!r}; load it as an image, or give dtype= for this key"
        )
    if data.numel() == 0:
        return data.to(torch.uint8)
    low, high = data.min().item(), data.max().item()
    for dtype in _LABEL_DTYPES:
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return data.to(dtype)
    raise TransformError(f"LoadImage: {filename} holds labels in [{low}, {high}], beyond int64")


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
        for name, value in (("sidecar", sidecar), ("overwrite", overwrite)):
            if not isinstance(value, bool):
                raise ConfigError(f"SaveImage: {name} must be True or False, got {value!r}")
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
