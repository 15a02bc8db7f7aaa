"""Parse YAML from untrusted sources without aliases: no "billion laughs".

YAML anchors and aliases (``&a [...]`` then ``*a``) let a few hundred bytes describe a
structure with billions of elements: each level of nested aliases multiplies the size. PyYAML's
``safe_load`` builds it cheaply (the aliases share one object), but anything that walks it
(formatting an error message, validating, converting to JSON) takes minutes and gigabytes.
gpuprep's pipeline files never need aliases (:func:`dump_yaml`, used by
:meth:`gpuprep.Compose.to_yaml`, writes a shared value out each time), so
:func:`load_yaml` refuses them outright, with the line of the first alias. Anchors alone are
harmless and accepted. Collections nested more than :data:`MAX_DEPTH` deep are refused
too (PyYAML's scanner is quadratic in the depth).

Example
-------
>>> load_yaml("seed: 3\\ntransforms: []")
{'seed': 3, 'transforms': []}
>>> try:
...     load_yaml("a: &x [1, 2]\\nb: *x")
... except ConfigError as error:
...     print(str(error)[:48])
YAML text, line 2: aliases (*x) are not accepted
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import REPR_LIMIT, ConfigError, short_repr

__all__ = ["dump_yaml", "load_yaml"]


#: The deepest nesting of collections accepted (``[...]``/``{...}`` and indented blocks, each).
#: PyYAML's scanner takes time quadratic in it (100,000 nested ``[`` took 40 s); pipelines nest
#: a few levels.
MAX_DEPTH = 100


class _AliasFreeLoader(yaml.SafeLoader):
    """PyYAML's safe loader that raises on the first alias instead of resolving it, and on deep nesting."""

    def fetch_flow_collection_start(self, TokenClass):
        if self.flow_level >= MAX_DEPTH:
            self._too_deep()
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column):
        if len(self.indents) >= MAX_DEPTH:
            self._too_deep()
        return super().add_indent(column)

    def _too_deep(self):
        raise ConfigError(
            f"{self.source_name}, line {self.get_mark().line + 1}: collections are nested more than "
            f"{MAX_DEPTH} deep; refusing it"
        )

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"{self.source_name}, line {event.start_mark.line + 1}: aliases (*{short_repr(event.anchor)[1:-1]}) "
                "are not accepted: they can expand a small file into billions of values; write the value out instead"
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, source: str = "YAML text") -> Any:
    """Parse YAML ``text`` with the safe loader, refusing aliases; ``source`` names it in errors.

    Raises
    ------
    ConfigError
        For text that does not parse, uses an alias, or nests too deeply (the message is short).
    """
    loader = _AliasFreeLoader(text)
    loader.source_name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} could not be parsed: {str(error)[:REPR_LIMIT * 2]}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to be parsed") from None
    finally:
        loader.dispose()


class _AliasFreeDumper(yaml.SafeDumper):
    """PyYAML's safe dumper writing a value that occurs twice out twice, never as an alias."""

    def ignore_aliases(self, data):
        return True


def dump_yaml(value: Any) -> str:
    """YAML text of ``value`` (keys in their order) without anchors or aliases, so :func:`load_yaml` reads it.

    Example
    -------
    >>> shared = ["image", "label"]
    >>> print(dump_yaml({"a": shared, "b": shared}), end="")
    a:
    - image
    - label
    b:
    - image
    - label
    """
    return yaml.dump(value, Dumper=_AliasFreeDumper, sort_keys=False)
