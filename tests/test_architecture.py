"""The package's shape, checked on its source with ``ast``: layers, import cycles, file and function sizes.

- A module imports only from its own layer and the layers below it (docs/design.md, "Layers").
  Every import counts: at module level, inside functions, under ``if TYPE_CHECKING:`` and
  ``importlib.import_module("literal")``; relative imports are resolved. A name imported from a
  package that is one of its submodules (``from . import grid``) is an import of that submodule.
- No two modules import each other, directly or through others. Imports under
  ``if TYPE_CHECKING:`` run only for type checkers, so they are left out of this check.
- No file under ``gpuprep/`` is over 400 lines and no function over 60 lines of code (its
  docstring, blank lines and comment lines not counted).
- The tests of ``functional/`` and ``random/`` mirror them file by file.

The checkers take the package folder and the layer map as arguments, so that
``test_checkers_flag_a_synthetic_package`` can show them failing on a package made to break each rule.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gpuprep"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60

# The layers of docs/design.md, lowest first; a module may import from its own layer and the ones
# below. An entry names a module or a package (with everything under it); every module must match
# exactly one entry (the longest that matches), so a new top-level module has to be placed here.
LAYERS = (
    # errors and the data model, with the small top-level modules that every layer may import:
    # _version (the version string), batching (collate/decollate, re-exported by sample), foreign
    # (MetaTensors adopted into samples; sample calls it), optional (importing MONAI, or an error
    # naming the extra), validation (argument checks) and records (history record layouts); the
    # last two are being added beside this test (issue 17).
    ("gpuprep._version", "gpuprep.errors", "gpuprep.batching", "gpuprep.sample", "gpuprep.foreign",
     "gpuprep.optional", "gpuprep.lazy_api", "gpuprep.metadata", "gpuprep.validation", "gpuprep.records"),
    ("gpuprep.functional",),
    ("gpuprep.io",),
    ("gpuprep.random",),
    ("gpuprep.registration",),
    ("gpuprep.transforms",),
    ("gpuprep.data",),
    ("gpuprep.models",),
    ("gpuprep.cli",),
    ("gpuprep",),  # the public facade, gpuprep/__init__.py: it may import everything
)

# TEMPORARY: imports that break a rule in files this change could not edit (issue 17). Each names
# its fix; test_temporary_exceptions_are_still_needed fails once the fix is in, so delete the
# entry then.
TEMPORARY_UPWARD_IMPORTS: set[tuple[str, str]] = set()
TEMPORARY_CYCLE_EDGES: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    """One import of a module of the package by another: where it is, and whether only type checkers run it."""

    source: str
    target: str
    where: str
    type_only: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.source} imports {self.target}"


def package_modules(folder: Path) -> dict[str, tuple[Path, bool]]:
    """Every module under ``folder`` (a package by its own name): its file and whether it is a package."""
    modules = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(folder.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _nearest_module(name: str, modules: dict) -> str | None:
    """``name``, or the closest package above it, that is a module of the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """The ids of the nodes inside ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) blocks."""
    inside = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (getattr(test, "id", None) or getattr(test, "attr", None)) == "TYPE_CHECKING":
            inside.update(id(child) for statement in node.body for child in ast.walk(statement))
    return inside


def _imported_modules(node: ast.AST, module: str, is_package: bool, modules: dict) -> list[str]:
    """The modules of the package one AST node imports (``from X import a``: ``X.a`` if it is a module, else ``X``)."""
    package = module if is_package else module.rpartition(".")[0]
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
        stem = ".".join([*base, *([node.module] if node.module else [])])
        names = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
    elif _is_import_call(node):
        text = node.args[0].value
        names = [f"{package}{text}" if text.startswith(".") else text]
    else:
        return []
    return [target for target in (_nearest_module(name, modules) for name in names) if target is not None]


def _is_import_call(node: ast.AST) -> bool:
    """``importlib.import_module("...")`` or ``__import__("...")`` with a literal name (a computed one is not seen)."""
    function = getattr(node, "func", None)
    name = getattr(function, "attr", None) or getattr(function, "id", None)
    return (isinstance(node, ast.Call) and name in ("import_module", "__import__") and bool(node.args)
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))


def import_graph(folder: Path) -> list[Import]:
    """Every import of a module of the package under ``folder`` by another (self-imports left out)."""
    modules = package_modules(folder)
    found = set()
    for module, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        type_only = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            for target in _imported_modules(node, module, is_package, modules):
                if target != module:
                    where = f"{path.relative_to(folder.parent)}:{node.lineno}"
                    found.add(Import(module, target, where, id(node) in type_only))
    return sorted(found, key=lambda i: (i.source, i.target, i.where))


def layer_of(module: str, layers: tuple[tuple[str, ...], ...]) -> int:
    """The index of the layer of ``module``: the one of its longest matching entry (KeyError if none)."""
    matches = [(len(entry), index) for index, entries in enumerate(layers) for entry in entries
               if module == entry or module.startswith(entry + ".")]
    if not matches:
        raise KeyError(f"{module} is in no layer: place it in LAYERS")
    return max(matches)[1]


def upward_imports(imports: list[Import], layers: tuple[tuple[str, ...], ...]) -> list[Import]:
    """The imports of a module from a higher layer."""
    return [i for i in imports if layer_of(i.target, layers) > layer_of(i.source, layers)]


def import_cycles(imports: list[Import], ignored_edges=frozenset()) -> list[list[Import]]:
    """One cycle (the imports that close it) for each group of modules that import each other.

    Imports under ``if TYPE_CHECKING:`` and the ``(source, target)`` pairs of ``ignored_edges`` are left out.
    """
    edges: dict[str, dict[str, Import]] = {}
    for i in imports:
        if not i.type_only and (i.source, i.target) not in ignored_edges:
            edges.setdefault(i.source, {}).setdefault(i.target, i)
    return [_shortest_cycle(min(group), group, edges) for group in _strongly_connected(edges)]


def _shortest_cycle(start: str, group: set[str], edges: dict[str, dict[str, Import]]) -> list[Import]:
    """The imports of a shortest way from ``start`` back to itself through ``group`` (breadth first)."""
    paths: dict[str, list[Import]] = {start: []}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target, found in sorted(edges.get(node, {}).items()):
            if target == start:
                return [*paths[node], found]
            if target in group and target not in paths:
                paths[target] = [*paths[node], found]
                queue.append(target)
    raise AssertionError(f"{start} is on no cycle of {sorted(group)}")


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's algorithm: the groups of two or more modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = {stack.pop()}
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def code_lines(source: str) -> set[int]:
    """The numbers of the lines that hold code: not blank, not only a comment (a multi-line string counts)."""
    lines = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING, tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return lines


def long_functions(folder: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path::function (n lines)`` for each function over ``limit`` lines of code (its docstring not counted)."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        code = code_lines(source)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                counted = code & set(range(node.lineno, node.end_lineno + 1))
                if ast.get_docstring(node, clean=False) is not None:
                    counted -= set(range(node.body[0].lineno, node.body[0].end_lineno + 1))
                if len(counted) > limit:
                    found.append(f"{path.relative_to(folder.parent)}::{node.name} ({len(counted)} lines)")
    return found


def long_files(folder: Path, limit: int = MAX_FILE_LINES) -> list[str]:
    """``path (n lines)`` for every Python file under ``folder`` with more than ``limit`` lines."""
    counts = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in sorted(folder.rglob("*.py"))}
    return [f"{path.relative_to(folder.parent)} ({n} lines)" for path, n in counts.items() if n > limit]


def _cycle_text(cycle: list[Import]) -> str:
    return " -> ".join([cycle[0].source, *(i.target for i in cycle)]) + f" ({', '.join(i.where for i in cycle)})"


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return import_graph(PACKAGE)


def test_every_module_is_in_one_layer():
    unplaced = []
    for module in package_modules(PACKAGE):
        try:
            layer_of(module, LAYERS)
        except KeyError as error:
            unplaced.append(str(error))
    assert not unplaced


def test_no_import_goes_up_a_layer(imports):
    upward = [str(i) for i in upward_imports(imports, LAYERS) if (i.source, i.target) not in TEMPORARY_UPWARD_IMPORTS]
    assert not upward, "imports from a higher layer (docs/design.md, Layers):\n" + "\n".join(upward)


def test_no_import_cycle(imports):
    cycles = [_cycle_text(c) for c in import_cycles(imports, TEMPORARY_CYCLE_EDGES)]
    assert not cycles, "modules that import each other:\n" + "\n".join(cycles)


def test_temporary_exceptions_are_still_needed(imports):
    """An exception whose import is gone (or no longer breaks the rule) must be deleted."""
    upward = {(i.source, i.target) for i in upward_imports(imports, LAYERS)}
    stale = sorted(TEMPORARY_UPWARD_IMPORTS - upward)
    for edge in TEMPORARY_CYCLE_EDGES:
        if not import_cycles(imports, TEMPORARY_CYCLE_EDGES - {edge}):
            stale.append(edge)
    assert not stale, f"delete these temporary exceptions from tests/test_architecture.py: {stale}"


def test_no_file_over_400_lines():
    assert not long_files(PACKAGE), f"split these files: {long_files(PACKAGE)}"


def test_no_function_over_60_lines_of_code():
    assert not long_functions(PACKAGE), f"split these functions: {long_functions(PACKAGE)}"


@pytest.mark.parametrize("package", ["functional", "random"])
def test_tests_mirror_the_package_file_by_file(package):
    """``gpuprep/functional/X.py`` is tested in ``tests/functional/test_X.py`` (and so for ``random``)."""
    tests = PACKAGE.parent / "tests" / package
    missing = [f"tests/{package}/test_{path.stem}.py" for path in sorted((PACKAGE / package).glob("*.py"))
               if path.stem != "__init__" and not (tests / f"test_{path.stem}.py").is_file()]
    assert (tests / "__init__.py").is_file() and not missing, f"missing test files: {missing}"


def test_checkers_flag_a_synthetic_package(tmp_path):
    """Each checker finds the break it is there for: an upward import, a cycle, a long function and file."""
    files = {
        "__init__.py": "",
        "low/__init__.py": "from . import a\n",
        "low/a.py": "def f():\n    from ..high.b import g\n    return g\n",  # up, and a cycle with b
        "low/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..high import b\n",
        "low/dynamic.py": "import importlib\nimportlib.import_module('pkg.high.b')\n",
        "high/__init__.py": "",
        "high/b.py": "from pkg.low import a\nfrom ..low.typed import x\n\ndef g():\n    pass\n",
        # long: 1 + 61 lines of code between comments and blank lines; short: 1 + 59
        "long.py": 'def long():\n    """Doc\n\n    string."""\n' + "    # comment\n\n    x = 1\n" * 61 + "\n"
                   'def short():\n    """Doc."""\n' + "    x = '#'\n" * 59 + "    # a comment after\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    layers = (("pkg.low", "pkg.long"), ("pkg.high",), ("pkg",))
    graph = import_graph(tmp_path / "pkg")
    assert {(i.source, i.target, i.type_only) for i in graph} == {
        ("pkg.low", "pkg.low.a", False), ("pkg.low.a", "pkg.high.b", False), ("pkg.low.typed", "pkg.high.b", True),
        ("pkg.low.dynamic", "pkg.high.b", False), ("pkg.high.b", "pkg.low.a", False),
        ("pkg.high.b", "pkg.low.typed", False)}
    assert sorted(str(i) for i in upward_imports(graph, layers)) == [
        "pkg/low/a.py:2: pkg.low.a imports pkg.high.b",
        "pkg/low/dynamic.py:2: pkg.low.dynamic imports pkg.high.b",
        "pkg/low/typed.py:3: pkg.low.typed imports pkg.high.b"]
    assert [_cycle_text(c) for c in import_cycles(graph)] == [
        "pkg.high.b -> pkg.low.a -> pkg.high.b (pkg/high/b.py:1, pkg/low/a.py:2)"]
    assert import_cycles(graph, {("pkg.low.a", "pkg.high.b")}) == []  # b -> typed -> b is for type checkers only
    assert long_functions(tmp_path / "pkg") == ["pkg/long.py::long (62 lines)"]
    assert long_functions(tmp_path / "pkg", limit=59) == ["pkg/long.py::long (62 lines)",
                                                          "pkg/long.py::short (60 lines)"]
    assert long_files(tmp_path / "pkg", limit=250) == []
    assert long_files(tmp_path / "pkg", limit=249) == ["pkg/long.py (250 lines)"]
    with pytest.raises(KeyError, match=r"pkg\.elsewhere is in no layer"):
        layer_of("pkg.elsewhere", layers[:2])
