"""Plain text for ``--help``: the reStructuredText markup of docstrings removed.

The sub-command modules' docstrings are written for the documentation site (reStructuredText);
argparse prints text as it is, so the parser strips the markup from every description and
argument help before it is shown. Pure string work: nothing heavy is imported here.
"""

from __future__ import annotations

import argparse
import re

# :func:`name`, :class:`~pkg.Name`, :mod:`text <target>` and the like (any Sphinx role).
_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`([^`]*)`")
_LITERAL = re.compile(r"``([^`]*)``")
_LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`_{1,2}")


def plain_text(text: str | None) -> str | None:
    """Return ``text`` with reStructuredText roles, literals and links turned into plain text.

    A role keeps its title (``:class:`text <target>```) or the last part of its target
    (``:func:`~gpuprep.io.read_image``` gives ``read_image``); ``None`` stays ``None``.

    Parameters
    ----------
    text:
        A docstring or help string.

    Example
    -------
    >>> plain_text("``gpuprep demo`` runs :class:`~gpuprep.SaveImage`, see `the docs <https://x.org>`_.")
    'gpuprep demo runs SaveImage, see the docs.'
    """
    if text is None:
        return None
    text = _ROLE.sub(lambda match: _role_title(match.group(1)), text)
    text = _LITERAL.sub(r"\1", text)
    return _LINK.sub(r"\1", text)


def strip_markup(parser: argparse.ArgumentParser) -> None:
    """Turn the description, epilog and every argument help of ``parser`` and its sub-commands into plain text.

    Example
    -------
    >>> parser = argparse.ArgumentParser(description="Run ``demo``.")
    >>> _ = parser.add_argument("--x", help="see :func:`f`")
    >>> strip_markup(parser)
    >>> parser.description, parser._actions[-1].help
    ('Run demo.', 'see f')
    """
    parser.description = plain_text(parser.description)
    parser.epilog = plain_text(parser.epilog)
    for action in parser._actions:  # argparse keeps no public list of the arguments
        if action.help not in (None, argparse.SUPPRESS):
            action.help = plain_text(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain_text(choice.help)
            for sub_parser in set(action.choices.values()):
                strip_markup(sub_parser)


def _role_title(content: str) -> str:
    explicit = re.fullmatch(r"(.*?)\s*<[^<>]*>", content, flags=re.S)
    if explicit and explicit.group(1):
        return explicit.group(1)
    target = content.lstrip("~!")
    return target.rsplit(".", 1)[-1] if content.startswith("~") else target
