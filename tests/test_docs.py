"""The README, the changelog and the documentation pages link only to files and headings that exist.

``mkdocs build --strict`` (in ``.ci/run``) checks the pages inside ``docs/``; these tests also cover
the README and CHANGELOG (outside the site) and fail fast, before mkdocs runs, when a page moves.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS.rglob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.M)


def relative_links(text: str) -> list[str]:
    """Targets of the Markdown links in ``text`` outside code blocks, without web or mail addresses."""
    text = FENCE.sub("", text)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def heading_anchors(text: str) -> set[str]:
    """The ids Python-Markdown's ``toc`` extension gives the headings of ``text`` (its default slugify)."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", text), re.M):
        plain = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
        plain = unicodedata.normalize("NFKD", plain).encode("ascii", "ignore").decode()
        anchors.add(re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", plain).strip().lower()))
    return anchors


def page_text(path: Path) -> str:
    """A page's Markdown with its ``--8<--`` snippets included, as mkdocs renders it."""
    text = path.read_text(encoding="utf-8")
    return SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8"), text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target} (no file {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(page_text(resolved)):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    assert not broken, f"{page.relative_to(ROOT)} links to missing targets: {broken}"


def test_snippet_includes_name_existing_files():
    missing = [f"{page.relative_to(ROOT)}: {name}" for page in DOCS.rglob("*.md")
               for name in SNIPPET.findall(page.read_text(encoding="utf-8")) if not (ROOT / name).is_file()]
    assert not missing


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.SafeLoader)

    def entries(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from entries(value) if isinstance(value, list) else [value]

    in_nav = set(entries(config["nav"]))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert in_nav == on_disk


def test_readme_keeps_the_quick_start_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
            "pip install -e . && gpuprep demo") in readme
    assert "\nbash .ci/run\n" in readme


def test_link_checker_finds_a_missing_page_and_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[a](missing.md) [b](#title) [c](#nope) [d](https://x.org/y.md)\n"
                    "```\n[e](in-code.md)\n```\n")
    assert relative_links(page.read_text()) == ["missing.md", "#title", "#nope"]
    assert heading_anchors(page.read_text()) == {"title"}
    # as mkdocs names the heading of docs/benchmarks.md
    assert heading_anchors("## Reading `.nii.gz` (`benchmarks/bench_gzip.py`, issue 2)\n") == {
        "reading-niigz-benchmarksbench_gzippy-issue-2"}


def _rendered_names(path: str) -> set[str]:
    """Names that a ``::: path`` directive renders: an object's own name, or a module's public members.

    A module with ``__all__`` renders those names; one without renders what it defines itself.
    """
    import importlib

    module_path, obj = path, None
    while True:
        try:
            module = importlib.import_module(module_path)
            break
        except ModuleNotFoundError:
            module_path, _, attribute = module_path.rpartition(".")
            obj = attribute if obj is None else f"{attribute}.{obj}"
    if obj is not None:
        return {obj.rsplit(".", 1)[-1]}
    if hasattr(module, "__all__"):
        return {path.rsplit(".", 1)[-1], *module.__all__}
    return {path.rsplit(".", 1)[-1]} | {name for name, value in vars(module).items() if not name.startswith("_")
                                        and getattr(value, "__module__", module.__name__) == module.__name__}


def test_every_public_name_is_in_the_api_reference():
    """Each name of ``gpuprep.__all__`` is rendered by an API page (``::: module`` or ``::: module.object``)."""
    import gpuprep

    rendered = set()
    for page in (DOCS / "api").glob("*.md"):
        for path in re.findall(r"^::: ([\w.]+)", page.read_text(encoding="utf-8"), re.M):
            rendered |= _rendered_names(path)
    missing = [name for name in gpuprep.__all__ if name != "__version__" and name not in rendered]
    assert not missing, f"public names without an API reference entry: {missing}"


RUNNABLE = re.compile(r"^<!-- test: runs -->\n```python\n(.*?)^```", re.S | re.M)
EXAMPLES = [(page, number, code) for page in sorted(DOCS.rglob("*.md"))
            for number, code in enumerate(RUNNABLE.findall(page.read_text(encoding="utf-8")))]


def test_runnable_examples_are_marked():
    assert len(EXAMPLES) >= 8  # a marker that stops matching must not silently drop the examples


@pytest.mark.parametrize(("page", "number", "code"), EXAMPLES,
                         ids=[f"{page.relative_to(DOCS)}#{number}" for page, number, _ in EXAMPLES])
def test_docs_example_runs(page, number, code, tmp_path, monkeypatch):
    """The examples marked ``<!-- test: runs -->`` run as written (on the bundled sample brain), in an empty folder."""
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page.relative_to(ROOT)} example {number}", "exec"), {"__name__": "__docs__"})
