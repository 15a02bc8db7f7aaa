"""Ready-made pipelines (grown as transforms land)."""

from __future__ import annotations

from collections.abc import Sequence

from .compose import Compose
from .spatial import Orientation


def brain_mri_preprocessing(image_keys: Sequence[str] = ("image",), label_keys: Sequence[str] = ()) -> Compose:
    """Return the default brain-MRI preprocessing pipeline used by ``gpuprep demo``.

    Parameters
    ----------
    image_keys:
        Intensity images.
    label_keys:
        Label maps and masks (moved with the images, never interpolated).

    Example
    -------
    >>> [type(t).__name__ for t in brain_mri_preprocessing().transforms]
    ['Orientation']
    """
    keys = [*image_keys, *label_keys]
    return Compose([Orientation(keys, axcodes="RAS")])
