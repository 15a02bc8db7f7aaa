"""Ready-made pipelines (grown as transforms land)."""

from __future__ import annotations

from collections.abc import Sequence

from .compose import Compose
from .intensity import BiasFieldCorrection, CTWindow, RescaleIntensity, ZNormalize
from .mask import ForegroundMask
from .spatial import CropForeground, CropOrPad, Orientation, PadToMultiple, Resample


def brain_mri_preprocessing(
    image_keys: Sequence[str] = ("image",),
    label_keys: Sequence[str] = (),
    spacing: float = 1.5,
    mask_key: str = "foreground",
    bias_correction: bool = True,
    bias_field_key: str | None = None,
) -> Compose:
    """Return the default brain-MRI preprocessing pipeline used by ``gpuprep demo``.

    RAS orientation, resampling to ``spacing`` mm (images linear, labels nearest), N4 bias-field
    correction of each image inside its Otsu foreground (ITK's defaults, see
    :class:`~gpuprep.BiasFieldCorrection`), intensities
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
    bias_correction:
        Include the N4 step.
    bias_field_key:
        If given, the first image's bias field is kept under this key (cropped and padded with
        the images), e.g. for a QC montage.

    Example
    -------
    >>> [type(t).__name__ for t in brain_mri_preprocessing().transforms][:4]
    ['Orientation', 'Resample', 'BiasFieldCorrection', 'RescaleIntensity']
    """
    image_keys, label_keys = list(image_keys), list(label_keys)
    keys = [*image_keys, *label_keys]
    n4: list = []
    if bias_correction and bias_field_key is None:
        n4 = [BiasFieldCorrection(image_keys)]
    elif bias_correction:  # the field of the first image is kept; the others are corrected as usual
        n4 = [BiasFieldCorrection(image_keys[:1], field_key=bias_field_key)]
        n4 += [BiasFieldCorrection(image_keys[1:])] if len(image_keys) > 1 else []
    moved = [*keys, mask_key] + ([bias_field_key] if bias_correction and bias_field_key else [])
    return Compose([
        Orientation(keys, axcodes="RAS"),
        Resample(keys, spacing=spacing),
        *n4,
        RescaleIntensity(image_keys, percentiles=(0.5, 99.5), out_range=(0.0, 1.0)),
        ForegroundMask(image_keys[0], mask_key=mask_key),
        CropForeground(moved, source_key=mask_key, margin=4),
        PadToMultiple(moved, 16),
        # Last, so that the zero padding is normalised like the rest of the background.
        ZNormalize(image_keys, mask=mask_key),
    ])


def ct_head_preprocessing(
    image_keys: Sequence[str] = ("image",),
    label_keys: Sequence[str] = (),
    spacing: float = 1.0,
    shape: Sequence[int] = (176, 208, 176),
    window: str | Sequence[float] = "brain",
) -> Compose:
    """Return a head-CT preprocessing pipeline, the CT counterpart of :func:`brain_mri_preprocessing`.

    RAS orientation, resampling to ``spacing`` mm (images linear, labels nearest), the CT
    ``window`` mapped onto [0, 1] (:class:`~gpuprep.CTWindow`: brain 40/80 HU by default, so air
    and bone saturate at 0 and 1) and a centred crop or zero pad to ``shape`` voxels (0 is the
    bottom of the window, i.e. air, after windowing). The default shape at 1 mm holds an adult
    head (176 x 208 x 176 mm, R-L x A-P x I-S) and is a multiple of 16 voxels, as a U-Net wants.

    Parameters
    ----------
    image_keys:
        CT images in Hounsfield units.
    label_keys:
        Label maps and masks (moved with the images, never interpolated or windowed).
    spacing:
        Target voxel size in mm.
    shape:
        Output spatial shape in voxels after the crop or pad.
    window:
        A :data:`~gpuprep.CT_WINDOWS` preset or a ``(level, width)`` pair in HU.

    Example
    -------
    >>> [type(t).__name__ for t in ct_head_preprocessing(label_keys=["seg"]).transforms]
    ['Orientation', 'Resample', 'CTWindow', 'CropOrPad']
    """
    image_keys, label_keys = list(image_keys), list(label_keys)
    keys = [*image_keys, *label_keys]
    return Compose([
        Orientation(keys, axcodes="RAS"),
        # Voxels resampled from outside the scan are air (-1000 HU), not water (0 HU); labels pad with 0.
        Resample(keys, spacing=spacing, padding_value=-1000),
        CTWindow(image_keys, window=window),
        # After windowing, the zero padding is the bottom of the window (air), as wanted.
        CropOrPad(keys, shape),
    ])
