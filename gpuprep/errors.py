"""Exceptions raised by gpuprep.

Every error says which file or argument is at fault, which rule it broke and the bad value,
so that a user can fix the input without reading a traceback. The command line prints these
errors as one line and exits non-zero.
"""

import reprlib


class GpuprepError(Exception):
    """Base class of every error gpuprep raises on purpose."""


class ImageReadError(GpuprepError, ValueError):
    """A file could not be read as an image (corrupt, truncated, unsupported, invalid)."""


class ImageWriteError(GpuprepError, OSError):
    """An image or sidecar could not be written."""


class MissingDependencyError(GpuprepError, ImportError):
    """An optional dependency (an extra such as ``gpuprep[io]``) is not installed."""


class TransformError(GpuprepError, ValueError):
    """A transform got data it cannot handle (wrong shape, wrong dtype, bad metadata)."""


class MissingKeyError(GpuprepError, KeyError):
    """A transform was asked to work on a key that the sample does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly instead
        return str(self.args[0]) if self.args else ""


class ConfigError(GpuprepError, ValueError):
    """A transform or pipeline was constructed with an invalid argument."""


class DatasetError(GpuprepError, ValueError):
    """A record, a table of records or a file named by a record is unusable."""


class OutputExistsError(ImageWriteError, FileExistsError):
    """An output file exists and may not be replaced (``overwrite=False``, or a JSON gpuprep did not write)."""


#: The most characters of a user-given value that an error message shows.
REPR_LIMIT = 200

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = _REPR.maxarray = 8
_REPR.maxdict = 8
_REPR.maxstring = _REPR.maxother = REPR_LIMIT
_REPR.maxlong = 60


def short_repr(value: object, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, built without formatting all of ``value``.

    Error messages show values from user input (a pipeline config, a YAML file) this way, so a
    huge or deeply nested value costs a bounded time and memory: :mod:`reprlib` visits at most
    a few levels and a few items per level.

    Example
    -------
    >>> short_repr(list(range(10**6)))
    '[0, 1, 2, 3, 4, 5, 6, 7, ...]'
    >>> len(short_repr("x" * 10**6, limit=50))
    50
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."
