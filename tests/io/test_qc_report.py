"""The QC report of ``gpuprep run --qc``: outlier flags, montages, the HTML index, and the page in a real browser."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpuprep.errors import ConfigError
from gpuprep.io.montage import save_montage
from gpuprep.io.qc_report import QCEntry, flag_outliers, write_montage, write_qc_index

#: A file name made to break out of HTML text and attributes; the page must show it, never run it.
HOSTILE_SOURCE = "in/evil<img src=x onerror=\"window.pwned=1\">'<script>window.pwned=2</script>.nii.gz"
#: A montage file name with characters that mean something in a URL (space, #, ?, %) and quotes.
HOSTILE_MONTAGE = "we ird #1 %41 ?\"'.png"


def _entry(name: str, volume_ml: object = None, **kwargs) -> QCEntry:
    numbers = {} if volume_ml is None else {"mask_volume_ml": volume_ml}
    return QCEntry(f"in/{name}.nii.gz", f"{name}.nii.gz", None, numbers, [], **kwargs)


def _numpy_flags(values: np.ndarray, threshold: float = 3.5) -> np.ndarray:
    """Iglewicz & Hoaglin's modified z-score, written out again with numpy (MAD, else the mean absolute deviation)."""
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    if mad > 0:
        score = 0.6745 * (values - median) / mad
    else:
        mean_ad = np.mean(np.abs(values - median))
        score = (values - median) / (1.253314 * mean_ad) if mean_ad > 0 else np.zeros_like(values)
    return np.abs(score) > threshold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flags_match_numpy_and_skip_entries_without_the_number(seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(1200.0, 60.0, size=40)
    values[rng.choice(40, size=4, replace=False)] = [310.0, 2500.0, 1480.0, 900.0]
    entries = [_entry(f"f{i}", float(v)) for i, v in enumerate(values)]
    # Entries without a usable number: missing, a string, a bool, NaN, infinite, a failed file.
    entries += [_entry("none"), _entry("text", "1e9"), _entry("bool", True), _entry("nan", math.nan),
                _entry("inf", math.inf), _entry("failed", error="cannot read")]
    for threshold in (3.5, 2.0):
        flags = flag_outliers(entries, threshold=threshold)
        assert flags[:40] == _numpy_flags(values, threshold).tolist()
        assert flags[40:] == [False] * 6
    assert sum(flag_outliers(entries)) >= 2  # 310 and 2500 at least


def test_flags_with_numpy_and_integer_numbers_and_other_keys():
    entries = [QCEntry(str(i), None, None, {"voxels": np.int64(v), "mask_volume_ml": 1.0}, [])
               for i, v in enumerate([100, 101, 99, 100, 102, 98, 1000])]
    assert flag_outliers(entries, key="voxels") == [False] * 6 + [True]
    assert flag_outliers(entries) == [False] * 7  # all equal: nothing is an outlier


def test_flags_when_most_values_are_equal_use_the_mean_absolute_deviation():
    values = np.array([5.0] * 8 + [5.5, 40.0])
    assert np.median(np.abs(values - np.median(values))) == 0
    flags = flag_outliers([_entry(str(i), v) for i, v in enumerate(values)])
    assert flags == _numpy_flags(values).tolist() == [False] * 9 + [True]


def test_fewer_than_three_values_flag_nothing_and_a_bad_threshold_is_refused():
    assert flag_outliers([]) == []
    assert flag_outliers([_entry("a", 1.0), _entry("b", 1000.0), _entry("c")]) == [False] * 3
    for threshold in (0, -1.0, math.nan, "3"):
        with pytest.raises(ConfigError, match="threshold"):
            flag_outliers([_entry("a", 1.0)], threshold=threshold)


def _bright_cube(size: int = 16) -> torch.Tensor:
    volume = torch.zeros(1, size, size, size)
    volume[:, 4:12, 4:12, 4:12] = 1000.0
    return volume


def test_write_montage_is_save_montage_in_a_new_folder(tmp_path):
    rows = [("input", _bright_cube(), torch.eye(4)), ("output", _bright_cube().to(torch.int16), 2 * torch.eye(4))]
    rows[1][2][3, 3] = 1
    out = write_montage(tmp_path / "qc" / "sub" / "a.png", rows)
    assert out == tmp_path / "qc" / "sub" / "a.png"
    reference = save_montage(tmp_path / "reference.png", rows)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(reference)))
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.png"]  # no temporary file left


def test_write_montage_refuses_bad_rows(tmp_path):
    with pytest.raises(ConfigError, match="at least one"):
        write_montage(tmp_path / "a.png", [])
    with pytest.raises(ConfigError, match="shape"):
        write_montage(tmp_path / "a.png", [("flat", torch.zeros(4, 4), torch.eye(4))])
    with pytest.raises(ConfigError, match="4x4"):
        write_montage(tmp_path / "a.png", [("input", torch.zeros(1, 4, 4, 4), torch.eye(3))])
    assert not (tmp_path / "a.png").exists()


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _report(folder: Path) -> tuple[list[QCEntry], Path]:
    """A run's QC folder: five montages of a bright cube (one with a hostile name), a flagged file and a failed one."""
    volumes = [1210.0, 1185.0, 1240.0, 1198.0, 320.0]
    names = ["a.png", "b.png", "c.png", "sub dir/d.png", HOSTILE_MONTAGE]
    entries = []
    for i, (volume_ml, name) in enumerate(zip(volumes, names)):
        write_montage(folder / name, [("input", _bright_cube(), torch.eye(4))])
        source = HOSTILE_SOURCE if name == HOSTILE_MONTAGE else f"in/sub-{i}.nii.gz"
        numbers = {"shape": "1x16x16x16", "spacing_mm": "1x1x1", "min": 0, "max": 1000.0, "mask_volume_ml": volume_ml}
        warnings = ["affine is <not> orthogonal & \"odd\""] if i == 1 else []
        entries.append(QCEntry(source, f"sub-{i}.nii.gz", name, numbers, warnings))
    entries.append(QCEntry("in/broken.nii.gz", None, None, {}, [], error="cannot read: <bad> header 'x' & \"y\""))
    return entries, write_qc_index(entries, folder)


def test_index_counts_cards_flags_and_failures(tmp_path):
    _, page = _report(tmp_path / "qc")
    assert page == tmp_path / "qc" / "index.html"
    text = page.read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(text)
    cards = {attrs["id"]: set(attrs["class"].split()) for tag, attrs in parser.tags if tag == "article"}
    assert list(cards) == [f"entry-{i}" for i in range(6)]
    assert [("outlier" in c, "failed" in c) for c in cards.values()] == [(False, False)] * 4 + [(True, False),
                                                                                                 (False, True)]
    assert "6 files" in text and "1 failed" in text and "1 flagged" in text
    assert f"median mask_volume_ml: {np.median([1210.0, 1185.0, 1240.0, 1198.0, 320.0]):.6g}" in text
    assert "outlier: mask_volume_ml" in text  # the visible flag
    assert html.escape("cannot read: <bad> header 'x' & \"y\"") in text
    assert html.escape("affine is <not> orthogonal & \"odd\"") in text
    assert "has-warnings" in cards["entry-1"]
    assert [name for name in os.listdir(page.parent) if name.startswith(".")] == []  # atomic: no temporary left


def test_index_escapes_hostile_names_and_quotes_relative_image_paths(tmp_path):
    folder = tmp_path / "qc"
    entries, _ = _report(folder)
    entries.append(QCEntry("in/abs.nii.gz", None, str(folder / "a.png"), {}, []))  # an absolute montage path
    text = write_qc_index(entries, folder).read_text(encoding="utf-8")
    assert "<script" not in text.lower() and 'onerror="' not in text  # only escaped: &lt;script&gt;, onerror=&quot;
    assert html.escape(HOSTILE_SOURCE) in text and html.escape(Path(HOSTILE_SOURCE).name) in text
    parser = _Tags()
    parser.feed(text)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert [image["src"] for image in images] == ["a.png", "b.png", "c.png", "sub%20dir/d.png",
                                                  "we%20ird%20%231%20%2541%20%3F%22%27.png", "a.png"]
    assert all(image["loading"] == "lazy" and image["width"] == "492" for image in images)
    assert HOSTILE_SOURCE in "".join(parser.text)  # the browser shows the name as it is
    # Self-contained: no external resources, no scripts, no links out of the page or its folder.
    assert not [attrs for tag, attrs in parser.tags if tag in ("script", "link", "iframe", "object")]
    for _, attrs in parser.tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            assert value is None or not re.match(r"^([a-z][a-z0-9+.-]*:|/|\\)", value, re.IGNORECASE), value


def test_index_of_no_entries(tmp_path):
    text = write_qc_index([], tmp_path / "new" / "qc").read_text(encoding="utf-8")
    assert "0 files" in text and "median mask_volume_ml: n/a" in text


# --- the page in a real headless browser --------------------------------------------------------------------------

#: Appended to a copy of the page: waits for every image (lazy ones forced to load), then writes what the
#: browser saw into <pre id="probe">, which --dump-dom prints.
PROBE = """<script>
addEventListener("load", async () => {
  const images = [...document.images];
  for (const image of images) image.loading = "eager";
  await Promise.all(images.map(i => i.complete ? null : new Promise(done => { i.onload = i.onerror = done; })));
  const report = {title: document.title, scripts: document.scripts.length, pwned: typeof window.pwned,
    text: document.body.innerText, outliers: document.querySelectorAll("article.outlier").length,
    images: images.map(i => { const r = i.getBoundingClientRect();
      return {src: i.getAttribute("src"), width: i.naturalWidth, height: i.naturalHeight,
              rect: [r.left, r.top, r.width, r.height]}; })};
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(report);
  document.body.append(out);
});
</script>"""


def _chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        reason = "no Chromium binary (chromium, chromium-browser or google-chrome) on PATH: apt-get install -y chromium"
        if os.environ.get("GPUPREP_REQUIRE_BROWSER"):
            pytest.fail(f"GPUPREP_REQUIRE_BROWSER is set but there is {reason}")
        pytest.skip(reason)
    return binary


def _headless(binary: str, profile: Path, *args: str) -> str:
    """Run Chromium headless (1200x900 CSS pixels at scale 1) and return its stdout."""
    command = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
               "--window-size=1200,900", "--virtual-time-budget=5000", f"--user-data-dir={profile}", *args]
    done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60,
                          check=False)  # UTF-8 whatever the locale (CI's may be ASCII)
    assert done.returncode == 0, f"{command} failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.slow
def test_page_renders_in_headless_chromium_with_every_image_loaded(tmp_path):
    binary = _chromium()
    folder = tmp_path / "qc"
    entries, page = _report(folder)
    probe = folder / "probe.html"  # beside the page, so relative paths resolve the same way
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    dom = _headless(binary, tmp_path / "profile", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.DOTALL)
    assert found, f"the probe did not report; DOM starts: {dom[:500]}"
    report = json.loads(html.unescape(found.group(1)))
    assert report["title"] == "gpuprep QC: 6 files"
    assert report["scripts"] == 1 and report["pwned"] == "undefined"  # the hostile names stayed text
    assert HOSTILE_SOURCE in report["text"] and "1 flagged" in report["text"] and report["outliers"] == 1
    sizes = [Image.open(folder / entry.montage).size for entry in entries if entry.montage]
    assert [(image["width"], image["height"]) for image in report["images"]] == sizes  # every <img> loaded

    # The real page (no probe), as a person sees it: the first thumbnail's pixels are on screen.
    shot = tmp_path / "shot.png"
    _headless(binary, tmp_path / "profile", f"--screenshot={shot}", page.as_uri())
    screen = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert screen.shape == (900, 1200) and screen.std() > 20  # not blank
    left, top, width, height = (round(v) for v in report["images"][0]["rect"])
    assert (width, height) == sizes[0] and top + height <= 900
    thumbnail = np.asarray(Image.open(folder / entries[0].montage).convert("L"), dtype=np.float64)
    # Chromium snaps the image to whole pixels; allow either rounding of a fractional position.
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    crop = min((screen[top + dy:top + dy + height, left + dx:left + dx + width] for dy, dx in shifts),
               key=lambda c: np.abs(c - thumbnail).mean())
    assert np.abs(crop - thumbnail).mean() < 10
    bright = thumbnail > 200  # the cube
    assert bright.sum() > 1000 and (crop[bright] > 150).mean() > 0.9 and (crop[thumbnail < 10] < 60).mean() > 0.9
