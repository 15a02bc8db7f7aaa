"""Griffe extension for the documentation build: read gpuprep's ``Example`` docstring sections as examples.

gpuprep's numpy-style docstrings title their doctests ``Example`` (singular); griffe's numpy
parser only knows ``Examples``, so it would render them as an admonition of plain Markdown in
which ``>>>`` lines become quotes and ``x["a"]["b"]`` a broken reference link (a warning under
``mkdocs build --strict``). This extension retitles the section before griffe parses the
docstring; the source files stay as they are. Loaded by ``mkdocs.yml`` (mkdocstrings' python
handler, ``extensions:``).

Example
-------
>>> import re
>>> re.sub(EXAMPLE_SECTION, EXAMPLES_TITLE, "Sum.\\n\\nExample\\n-------\\n>>> 1 + 1\\n2")
'Sum.\\n\\nExamples\\n--------\\n>>> 1 + 1\\n2'
"""

from __future__ import annotations

import re
from typing import Any

import griffe

EXAMPLE_SECTION = re.compile(r"^([ \t]*)Example\n([ \t]*)-------[ \t]*$", re.MULTILINE)
EXAMPLES_TITLE = r"\1Examples\n\2--------"


class ExampleSections(griffe.Extension):
    """Retitle each object's ``Example`` docstring section ``Examples`` (numpy's name) before parsing."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring text in place (griffe parses it lazily, after this hook)."""
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE_SECTION.sub(EXAMPLES_TITLE, obj.docstring.value)
