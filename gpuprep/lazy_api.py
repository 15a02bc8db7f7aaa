"""Loading the whole public API on demand, for the lower layers that need every transform registered.

``import gpuprep`` loads its modules on first use, so that the command line starts fast, and a
transform class registers its name when its module is imported. A lookup by name that misses (a
pipeline file or a history record naming ``SegmentBrain``) calls :func:`load_api`, which runs the
loader that the facade, ``gpuprep/__init__.py``, handed in at import: the lower layers never import
the facade. No torch here (the facade imports this module at once).
"""

from __future__ import annotations

from collections.abc import Callable

_LOADERS: list[Callable[[], object]] = []


def on_load_api(loader: Callable[[], object]) -> None:
    """Have :func:`load_api` call ``loader`` (the facade hands in its own at import)."""
    _LOADERS.append(loader)


def load_api() -> None:
    """Import every module of the public API (through the loaders handed in), so that all transforms register.

    Example
    -------
    >>> from gpuprep.transforms.base import REGISTRY
    >>> load_api()
    >>> "SegmentBrain" in REGISTRY
    True
    """
    for loader in _LOADERS:
        loader()
