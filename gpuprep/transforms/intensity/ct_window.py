"""CT display windows: clip Hounsfield units to a level/width window and map it onto [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import ConfigError
from ...functional.intensity import clip_intensity, scale_intensity_range
from ..base import Transform, float_intensity_keys
from ._masking import check_number

#: Window presets as ``(level, width)`` in HU. Values from Radiopaedia, "Windowing (CT)"
#: (https://radiopaedia.org/articles/windowing-ct): brain W:80 L:40; subdural W:130-300 L:50-100
#: (the middle of both ranges is taken); bones W:1800 L:400 (temporal bones: W:2800 L:600, pass
#: ``(600, 2800)``); lungs W:1500 L:-600; abdominal soft tissues W:400 L:50.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "bone": (400.0, 1800.0),
    "lung": (-600.0, 1500.0),
    "soft-tissue": (50.0, 400.0),
}
#: What :class:`CTWindow` returns: ``"unit"`` maps the window onto [0, 1], ``"hu"`` keeps clipped HU.
CT_WINDOW_OUTPUTS = ("unit", "hu")


def resolve_ct_window(window: Any, owner: str = "CTWindow") -> tuple[float, float]:
    """Return ``(level, width)`` in HU for a preset name or a ``(level, width)`` pair.

    Parameters
    ----------
    window:
        A key of :data:`CT_WINDOWS` or a pair of finite numbers with ``width > 0``.
    owner:
        Named in the error message.

    Example
    -------
    >>> resolve_ct_window("brain"), resolve_ct_window((50, 350))
    ((40.0, 80.0), (50.0, 350.0))
    """
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ConfigError(
                f"{owner}: window must be one of {sorted(CT_WINDOWS)} or a (level, width) pair in HU, got {window!r}"
            )
        return CT_WINDOWS[window]
    if not isinstance(window, Sequence) or isinstance(window, bytes) or len(window) != 2:
        raise ConfigError(
            f"{owner}: window must be one of {sorted(CT_WINDOWS)} or a (level, width) pair in HU, got {window!r}"
        )
    level = check_number(owner, "window level", window[0])
    width = check_number(owner, "window width", window[1])
    if width <= 0:
        raise ConfigError(f"{owner}: window width must be > 0 HU, got (level, width) = {tuple(window)!r}")
    return level, width


class CTWindow(Transform):
    """Clip a CT in Hounsfield units to a display window and map the window onto [0, 1].

    The window ``(level, width)`` covers ``[level - width / 2, level + width / 2]`` HU (the
    radiology convention: the level is the middle grey, the width the span from black to white).
    With ``output="unit"`` (default) the window is mapped linearly onto ``[0, 1]`` and values
    outside it are clipped, exactly MONAI's ``ScaleIntensityRange(a_min=low, a_max=high,
    b_min=0, b_max=1, clip=True)``; with ``output="hu"`` the values are only clipped and stay in
    HU. Presets (:data:`CT_WINDOWS`, from Radiopaedia's "Windowing (CT)"): ``"brain"`` 40/80,
    ``"subdural"`` 75/215, ``"bone"`` 400/1800, ``"lung"`` -600/1500, ``"soft-tissue"`` 50/400
    (level/width in HU). The same constants for every sample, so nothing is recorded per sample.

    Label maps (kind ``"label"``, see :func:`gpuprep.get_kind`) are left alone. Floating-point
    images keep their dtype; integer CTs (int16 HU) become float32. Works on any device, with
    no host synchronisation.

    Parameters
    ----------
    keys:
        CT image keys, in HU (apply the DICOM rescale slope/intercept first; gpuprep's DICOM
        reader does).
    window:
        A preset name or a ``(level, width)`` pair in HU, ``width > 0``.
    output:
        ``"unit"`` (window mapped onto [0, 1]) or ``"hu"`` (clipped HU).
    allow_missing_keys:
        Skip absent keys instead of raising.

    Example
    -------
    >>> import gpuprep as gp, torch
    >>> s = gp.make_sample({"ct": torch.tensor([-1000.0, 0.0, 40.0, 1000.0]).reshape(1, 1, 1, 4)})
    >>> gp.CTWindow("ct", window="brain")(s)["ct"].flatten().tolist()
    [0.0, 0.0, 0.5, 1.0]
    >>> gp.CTWindow("ct", window=(40, 80), output="hu")(s)["ct"].flatten().tolist()
    [0.0, 0.0, 40.0, 80.0]
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        window: str | Sequence[float] = "brain",
        output: str = "unit",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.level, self.width = resolve_ct_window(window, name)
        if output not in CT_WINDOW_OUTPUTS:
            raise ConfigError(f"{name}: output must be one of {CT_WINDOW_OUTPUTS}, got {output!r}")
        self.output = output

    @property
    def bounds(self) -> tuple[float, float]:
        """The window ``(low, high)`` in HU."""
        return self.level - self.width / 2, self.level + self.width / 2

    def apply_params(self, batch: dict, keys: list[str], params: list[dict]) -> dict:
        low, high = self.bounds
        for key in float_intensity_keys(batch, keys):  # label maps are left alone; an int16 CT becomes float32
            if self.output == "unit":
                batch[key] = scale_intensity_range(batch[key], low, high, 0.0, 1.0, clip=True)
            else:
                batch[key] = clip_intensity(batch[key], low, high)
        return batch
