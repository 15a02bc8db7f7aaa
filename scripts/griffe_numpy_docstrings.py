r"""Griffe extension for the documentation build: read gpuprep's numpy-style docstrings as written.

Two habits of gpuprep's docstrings that griffe's numpy parser does not know, rewritten before it
parses a docstring (the source files stay as they are):

- doctests sit under ``Example`` (singular); griffe only knows ``Examples``, and would render the
  section as plain Markdown in which ``>>>`` lines become quotes and ``x["a"]["b"]`` a broken
  reference link (a warning under ``mkdocs build --strict``);
- cross-references use Sphinx roles (``:class:`~gpuprep.Compose```); Markdown shows them as raw
  text, so they become code spans of the name (the last component after ``~``, as Sphinx shows
  it). They are not turned into links: many name private modules that the site does not render.

Loaded by ``mkdocs.yml`` (mkdocstrings' python handler, ``options: extensions:``).

Example
-------
>>> for_griffe("Use :class:`~gpuprep.Compose`.\n\nExample\n-------\n1 + 1").splitlines()
['Use `Compose`.', '', 'Examples', '--------', '1 + 1']
"""

from __future__ import annotations

import re
from typing import Any

import griffe

EXAMPLE_SECTION = re.compile(r"^([ \t]*)Example\n([ \t]*)-------[ \t]*$", re.MULTILINE)
SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _code_span(match: re.Match) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def for_griffe(docstring: str) -> str:
    """Return ``docstring`` with ``Example`` sections retitled ``Examples`` and Sphinx roles as code spans."""
    docstring = EXAMPLE_SECTION.sub(r"\1Examples\n\2--------", docstring)
    return SPHINX_ROLE.sub(_code_span, docstring)


class NumpyDocstrings(griffe.Extension):
    """Rewrite each object's docstring with :func:`for_griffe` before griffe parses it."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring text in place (griffe parses it lazily, after this hook)."""
        if obj.docstring is not None:
            obj.docstring.value = for_griffe(obj.docstring.value)
