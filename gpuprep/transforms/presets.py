"""Ready-made pipelines (grown as transforms land)."""

from __future__ import annotations

from collections.abc import Sequence

from .compose import Compose
from .intensity import RescaleIntensity, ZNormalize
from .mask import ForegroundMask
from .spatial import CropForeground, Orientation, PadToMultiple, Resample


def brain_mri_preprocessing(
    image_keys: Sequence[str] = ("image",),
    label_keys: Sequence[str] = (),
    spacing: float = 1.5,
    mask_key: str = "foreground",
) -> Compose:
    """Return the default brain-MRI preprocessing pipeline used by ``gpuprep demo``.

    RAS orientation, resampling to ``spacing`` mm (images linear, labels nearest), intensities
    rescaled by their 0.5-99.5 percentiles, a head (foreground) mask by Otsu's threshold with
    holes filled, a crop to the mask's bounding box (4 voxels of margin), zero padding to a
    multiple of 16 voxels (as a U-Net wants) and z-scores from the voxels inside the mask.

    Parameters
    ----------
    image_keys:
        Intensity images; the first one defines the foreground.
    label_keys:
        Label maps and masks (moved with the images, never interpolated).
    spacing:
        Target voxel size in mm.
    mask_key:
        Key under which the foreground mask is stored.

    Example
    -------
    >>> [type(t).__name__ for t in brain_mri_preprocessing().transforms][:3]
    ['Orientation', 'Resample', 'RescaleIntensity']
    """
    image_keys, label_keys = list(image_keys), list(label_keys)
    keys = [*image_keys, *label_keys]
    return Compose([
        Orientation(keys, axcodes="RAS"),
        Resample(keys, spacing=spacing),
        RescaleIntensity(image_keys, percentiles=(0.5, 99.5), out_range=(0.0, 1.0)),
        ForegroundMask(image_keys[0], mask_key=mask_key),
        CropForeground([*keys, mask_key], source_key=mask_key, margin=4),
        PadToMultiple([*keys, mask_key], 16),
        # Last, so that the zero padding is normalised like the rest of the background.
        ZNormalize(image_keys, mask=mask_key),
    ])
