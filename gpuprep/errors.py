"""Exceptions raised by gpuprep.

Every error says which file or argument is at fault, which rule it broke and the bad value,
so that a user can fix the input without reading a traceback. The command line prints these
errors as one line and exits non-zero.
"""


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
