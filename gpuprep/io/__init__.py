"""Reading and writing images with their world coordinates, and sidecars.

Example
-------
>>> import tempfile, pathlib, torch
>>> from gpuprep.io import read_image, write_image
>>> path = write_image(pathlib.Path(tempfile.mkdtemp()) / "x.nii.gz", torch.ones(1, 3, 4, 5), torch.eye(4))
>>> data, meta = read_image(path)
>>> tuple(data.shape), meta["format"]
((1, 3, 4, 5), 'nifti1')
"""

from .atomic import atomic_path, atomic_write_bytes
from .reader import READ_EXTENSIONS, read_image
from .sidecar import make_sidecar, pipeline_from_history, read_sidecar, sidecar_path, write_sidecar
from .writer import WRITE_FORMATS, write_image

__all__ = [
    "READ_EXTENSIONS",
    "WRITE_FORMATS",
    "atomic_path",
    "atomic_write_bytes",
    "make_sidecar",
    "pipeline_from_history",
    "read_image",
    "read_sidecar",
    "sidecar_path",
    "write_image",
    "write_sidecar",
]
