"""The QC report of ``gpuprep run --qc``: one montage PNG per file and a static HTML index of them all.

A run writes, per input file, a montage (:func:`write_montage`) into ``DIR/qc`` and collects a
:class:`QCEntry` (its numbers, warnings and error); :func:`write_qc_index` then writes
``DIR/qc/index.html``, one self-contained page (inline CSS, no scripts, no external resources)
that a person scrolls through: a header with the counts and the median of the outlier key, then
one card per file with its thumbnail, numbers, warnings, error, and a visible flag on the files
whose number is a robust outlier (:func:`flag_outliers`). Every string from the run (file names,
warnings, errors) is escaped, and image paths are relative to the page and URL-quoted.
"""

from __future__ import annotations

import html
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from .atomic import atomic_write_bytes
from .montage import save_montage

#: Iglewicz & Hoaglin's constant: the 0.75 quantile of the standard normal (so 0.6745 / MAD estimates 1 / sigma).
_MAD_CONSTANT = 0.6745
#: sqrt(pi / 2): the mean absolute deviation of a normal distribution is sigma * sqrt(2 / pi).
_MEAN_AD_CONSTANT = math.sqrt(math.pi / 2)

#: The page's style sheet (inline in the page): cards in one column, flagged ones with a red edge and badge.
_PAGE_CSS = """
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: #eef0f3; color: #1d2330; }
header { padding: 12px 20px; background: #fff; border-bottom: 1px solid #c9ced6; }
h1 { margin: 0 0 6px; font-size: 20px; }
.count { display: inline-block; margin-right: 18px; font-weight: 600; }
#count-failed, .jump-failed { color: #a35200; }
#count-flagged, .jump-flagged { color: #b3141b; }
.method { color: #555c68; font-size: 12px; margin: 4px 0 0; }
.jump { margin: 4px 0; }
main { padding: 12px 20px; }
.entry { background: #fff; border: 1px solid #c9ced6; border-left: 6px solid #c9ced6; border-radius: 4px;
         margin: 0 0 12px; padding: 8px 12px; }
.entry.failed { border-left-color: #e08a00; background: #fff8ec; }
.entry.outlier { border-left-color: #d0202a; background: #fff1f1; }
h2 { margin: 0 0 6px; font-size: 15px; word-break: break-all; }
.badge { display: inline-block; margin-right: 8px; padding: 1px 7px; border-radius: 3px; font-size: 12px;
         color: #fff; vertical-align: 1px; }
.badge-failed { background: #b86200; }
.badge-outlier { background: #c4161f; }
.badge-warning { background: #7a6a00; }
.body { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
img.montage { display: block; max-width: 100%; height: auto; background: #000; }
.no-montage { width: 160px; padding: 30px 0; text-align: center; color: #555c68; background: #dde1e6; }
.details { flex: 1 1 320px; min-width: 0; }
table.numbers { border-collapse: collapse; }
.numbers th, .numbers td { padding: 1px 10px 1px 0; text-align: left; vertical-align: top; }
.numbers th { color: #555c68; font-weight: normal; }
.numbers td { font-variant-numeric: tabular-nums; word-break: break-all; }
tr.outlier-key td { font-weight: 700; }
.entry.outlier tr.outlier-key td { color: #b3141b; }
.warnings { margin: 6px 0 0; padding-left: 18px; color: #6b5a00; }
pre.error { margin: 6px 0 0; padding: 6px; background: #fde9d2; white-space: pre-wrap; word-break: break-all; }
"""


@dataclass
class QCEntry:
    """What the QC report shows of one input file.

    Parameters
    ----------
    source:
        The input path, as given to the run.
    output:
        The output image's path relative to the run's output folder, or ``None`` (e.g. it failed).
    montage:
        The montage PNG's path relative to ``DIR/qc`` (the index's folder), or ``None``.
    numbers:
        Key numbers to show, in this order, e.g. ``"shape"``, ``"spacing_mm"``, ``"min"``, ``"max"``,
        ``"mask_volume_ml"``. Values may be numbers or preformatted strings.
    warnings:
        Messages to show beside the file.
    error:
        Why the file failed, or ``None`` when it did not.

    Example
    -------
    >>> entry = QCEntry("in/a.nii.gz", "a.nii.gz", "a.png", {"mask_volume_ml": 1203.5}, [])
    >>> entry.error is None
    True
    """

    source: str
    output: str | None
    montage: str | None
    numbers: dict[str, float | int | str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def write_montage(path: str | os.PathLike, rows: Sequence[tuple[str, torch.Tensor, torch.Tensor]]) -> Path:
    """Write one file's montage PNG (three orthogonal slices per row) atomically, creating its folder.

    A thin wrapper around :func:`gpuprep.io.montage.save_montage`: every row is cut through the
    centre of the first row's grid and drawn at the same mm scale.

    Parameters
    ----------
    path:
        The ``.png`` to write (its parent folders are created).
    rows:
        ``(title, volume, affine)`` triples, e.g. the input and the preprocessed output; ``volume``
        is ``[C, D, H, W]`` (the first channel is shown) on any device, ``affine`` its 4x4
        voxel-to-world matrix.

    Returns
    -------
    Path
        ``path``.

    Example
    -------
    >>> import tempfile, pathlib, torch
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> out = write_montage(folder / "qc" / "a.png", [("input", torch.rand(1, 8, 8, 8), torch.eye(4))])
    >>> out.exists(), out.parent.name
    (True, 'qc')
    """
    rows = list(rows)
    if not rows:
        raise ConfigError("write_montage needs at least one (title, volume, affine) row, got none")
    checked = []
    for title, volume, affine in rows:
        volume = torch.as_tensor(volume)
        affine = torch.as_tensor(affine, dtype=torch.float64).cpu()
        if volume.ndim not in (3, 4) or volume.numel() == 0:
            raise ConfigError(f"montage row {title!r}: volume must be a non-empty [C, D, H, W] tensor, "
                              f"got shape {tuple(volume.shape)}")
        if tuple(affine.shape) != (4, 4):
            raise ConfigError(f"montage row {title!r}: affine must be 4x4, got shape {tuple(affine.shape)}")
        checked.append((str(title), volume, affine))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_montage(path, checked)


def _number(entry: QCEntry, key: str) -> float | None:
    """``entry.numbers[key]`` as a finite float, or ``None`` (missing, a string, a bool, NaN or infinite)."""
    value = entry.numbers.get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _modified_z_scores(values: Sequence[float | None]) -> list[float | None]:
    """Iglewicz & Hoaglin's modified z-scores of the present values (``None`` stays ``None``).

    ``0.6745 (x - median) / MAD``; when the MAD is 0 (over half the values equal), the mean absolute
    deviation stands in: ``(x - median) / (1.2533 meanAD)``; when that is 0 too, every score is 0.
    Fewer than 3 values give no scores.
    """
    present = np.array([v for v in values if v is not None], dtype=np.float64)
    if present.size < 3:
        return [None] * len(values)
    median = np.median(present)
    deviation = np.abs(present - median)
    mad = float(np.median(deviation))
    mean_ad = float(deviation.mean())
    if mad > 0:
        scale = mad / _MAD_CONSTANT
    elif mean_ad > 0:
        scale = _MEAN_AD_CONSTANT * mean_ad
    else:
        scale = math.inf
    scores = iter(((present - median) / scale).tolist())
    return [None if v is None else next(scores) for v in values]


def flag_outliers(entries: Sequence[QCEntry], key: str = "mask_volume_ml", threshold: float = 3.5) -> list[bool]:
    """Flag the entries whose ``numbers[key]`` is a robust outlier among all entries.

    The modified z-score of Iglewicz & Hoaglin (1993), ``M = 0.6745 (x - median) / MAD`` with the
    median absolute deviation ``MAD = median(|x - median|)``, is not pulled by the outliers
    themselves (unlike the mean and standard deviation); an entry is flagged when
    ``|M| > threshold`` (3.5 is their recommendation). When the MAD is 0 (over half the values
    equal), ``M = (x - median) / (1.253314 meanAD)`` with the mean absolute deviation; when all
    values are equal nothing is flagged.

    Parameters
    ----------
    entries:
        The entries; an entry without the number (missing, a string, a bool, NaN or infinite;
        usually a failed file) is not flagged and does not count.
    key:
        The key of :attr:`QCEntry.numbers` to test.
    threshold:
        The largest ``|M|`` that is not an outlier (positive).

    Returns
    -------
    list[bool]
        One flag per entry, in order; all ``False`` when fewer than 3 entries have the number.

    Example
    -------
    >>> volumes = [1200.0, 1180.0, 1250.0, 1210.0, 310.0]
    >>> flag_outliers([QCEntry(f"{i}.nii", None, None, {"mask_volume_ml": v}, []) for i, v in enumerate(volumes)])
    [False, False, False, False, True]
    """
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not threshold > 0:
        raise ConfigError(f"flag_outliers threshold must be a positive number, got {threshold!r}")
    scores = _modified_z_scores([_number(entry, key) for entry in entries])
    return [score is not None and abs(score) > threshold for score in scores]


def _format(value: object) -> str:
    """A number as text for the page (6 significant digits for floats)."""
    if isinstance(value, float | np.floating) and not isinstance(value, bool):
        return f"{float(value):.6g}"
    return str(value)


def _image_src(montage: str, folder: Path) -> str:
    """The ``src`` of a montage: a relative, URL-quoted POSIX path (absolute paths are made relative to ``folder``)."""
    path = PurePath(montage)
    if path.is_absolute():
        path = PurePath(os.path.relpath(path, folder))
    return quote(path.as_posix())


def _png_size(path: Path) -> tuple[int, int] | None:
    """The ``(width, height)`` of an image file, read from its header, or ``None`` if it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError):
        return None


def _thumbnail(entry: QCEntry, folder: Path) -> str:
    """The card's ``<img>`` (lazy, relative ``src``, sized when the PNG can be read), or a placeholder."""
    if not entry.montage:
        return '<div class="no-montage">no montage</div>'
    src = _image_src(entry.montage, folder)
    size = _png_size(folder / entry.montage)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    alt = html.escape(f"montage of {PurePath(entry.source).name}")
    return f'<a href="{src}"><img class="montage" src="{src}" alt="{alt}" loading="lazy"{dims}></a>'


def _card(index: int, entry: QCEntry, flagged: bool, score: float | None, key: str, folder: Path) -> str:
    """One file's ``<article>``: name, flags, thumbnail, paths, numbers, warnings and error."""
    classes = ["entry"] + (["failed"] if entry.error is not None else []) + (["outlier"] if flagged else [])
    classes += ["has-warnings"] if entry.warnings else []
    badges = []
    if entry.error is not None:
        badges.append('<span class="badge badge-failed">failed</span>')
    if flagged:
        badges.append(f'<span class="badge badge-outlier">outlier: {html.escape(key)} '
                      f'(modified z = {score:+.1f})</span>')
    if entry.warnings:
        badges.append(f'<span class="badge badge-warning">{len(entry.warnings)} warning(s)</span>')
    paths = [("source", entry.source)] + ([("output", entry.output)] if entry.output is not None else [])
    rows = [f'<tr class="path"><th>{name}</th><td>{html.escape(value)}</td></tr>' for name, value in paths]
    for name, value in entry.numbers.items():
        mark = ' class="outlier-key"' if name == key else ""
        rows.append(f"<tr{mark}><th>{html.escape(str(name))}</th><td>{html.escape(_format(value))}</td></tr>")
    parts = [f'<article class="{" ".join(classes)}" id="entry-{index}">',
             f'<h2>{"".join(badges)}<span class="name">{html.escape(PurePath(entry.source).name)}</span></h2>',
             f'<div class="body">{_thumbnail(entry, folder)}<div class="details">',
             f'<table class="numbers">{"".join(rows)}</table>']
    if entry.warnings:
        items = "".join(f"<li>{html.escape(str(warning))}</li>" for warning in entry.warnings)
        parts.append(f'<ul class="warnings">{items}</ul>')
    if entry.error is not None:
        parts.append(f'<pre class="error">{html.escape(entry.error)}</pre>')
    parts.append("</div></div></article>")
    return "\n".join(parts)


def _jump_list(label: str, css: str, indices: list[int], entries: Sequence[QCEntry]) -> str:
    """A line of links to the cards of ``indices`` (e.g. the failed ones), or nothing."""
    if not indices:
        return ""
    links = ", ".join(f'<a href="#entry-{i}">{html.escape(PurePath(entries[i].source).name)}</a>' for i in indices)
    return f'<p class="jump {css}">{label}: {links}</p>'


def _header(entries: Sequence[QCEntry], flags: list[bool], key: str) -> str:
    """The page's header: the counts, the median of ``key`` and links to the failed and flagged files."""
    failed = [i for i, entry in enumerate(entries) if entry.error is not None]
    flagged = [i for i, flag in enumerate(flags) if flag]
    values = [v for v in (_number(entry, key) for entry in entries) if v is not None]
    median = _format(float(np.median(values))) if values else "n/a"
    name = html.escape(key)
    return "\n".join([
        "<header>", "<h1>gpuprep QC report</h1>",
        '<p class="counts">'
        f'<span class="count" id="count-files">{len(entries)} files</span>'
        f'<span class="count" id="count-failed">{len(failed)} failed</span>'
        f'<span class="count" id="count-flagged">{len(flagged)} flagged</span>'
        f'<span class="count" id="median">median {name}: {html.escape(median)}</span></p>',
        _jump_list("Failed", "jump-failed", failed, entries),
        _jump_list("Flagged", "jump-flagged", flagged, entries),
        f'<p class="method">Flagged: |modified z-score| of {name} over 3.5, where modified z = 0.6745 '
        f"(x &minus; median) / MAD (Iglewicz &amp; Hoaglin); files without {name} are not tested.</p>",
        "</header>",
    ])


def write_qc_index(entries: Sequence[QCEntry], folder: str | os.PathLike, outlier_key: str = "mask_volume_ml") -> Path:
    """Write ``folder/index.html``, the static QC page of a run, atomically (creating ``folder``).

    The page needs nothing but itself and the montages: inline CSS, no scripts, no external
    resources. Its header counts the files, the failed ones and the flagged ones (robust outliers
    of ``outlier_key``, see :func:`flag_outliers`) and gives the median of ``outlier_key``, with
    links to the failed and flagged cards; then comes one card per entry, in order, with its
    thumbnail (``<img loading="lazy">``, ``src`` relative to the page and URL-quoted), paths,
    numbers, warnings and error. Flagged cards carry the class ``outlier`` and a badge, failed
    ones the class ``failed``. Every string is HTML-escaped.

    Parameters
    ----------
    entries:
        One :class:`QCEntry` per input file; their ``montage`` paths are relative to ``folder``.
    folder:
        Where the page goes (``DIR/qc``).
    outlier_key:
        The key of :attr:`QCEntry.numbers` tested for outliers and summarised by its median.

    Returns
    -------
    Path
        The page, ``folder/index.html``.

    Example
    -------
    >>> import tempfile, pathlib
    >>> entries = [QCEntry("a.nii.gz", "a.nii.gz", "a.png", {"mask_volume_ml": 1200.0}, []),
    ...            QCEntry("b<1>.nii.gz", None, None, {}, [], error="cannot read")]
    >>> page = write_qc_index(entries, pathlib.Path(tempfile.mkdtemp()) / "qc")
    >>> text = page.read_text()
    >>> "2 files" in text, "1 failed" in text, "b&lt;1&gt;.nii.gz" in text, 'src="a.png"' in text
    (True, True, True, True)
    """
    entries = list(entries)
    folder = Path(folder)
    flags = flag_outliers(entries, outlier_key)
    scores = _modified_z_scores([_number(entry, outlier_key) for entry in entries])
    cards = [_card(i, entry, flag, score, outlier_key, folder)
             for i, (entry, flag, score) in enumerate(zip(entries, flags, scores))]
    title = html.escape(f"gpuprep QC: {len(entries)} files")
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title>", f"<style>{_PAGE_CSS}</style>", "</head>", "<body>",
        _header(entries, flags, outlier_key), "<main>", *cards, "</main>", "</body>", "</html>", "",
    ])
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(folder / "index.html", page.encode("utf-8"))
