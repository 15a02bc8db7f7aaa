"""Label values of the bundled sample brain and of the synthetic phantom.

Both label maps share the tissue classes of :data:`TISSUE_LABELS`; the phantom adds a skull
(:data:`PHANTOM_LABELS`). Labels are stored as ``uint8``.

Example
-------
>>> TISSUE_LABELS[WM]
'wm'
>>> sorted(PHANTOM_LABELS)
[0, 1, 2, 3, 4]
"""

from __future__ import annotations

from types import MappingProxyType

BACKGROUND = 0
CSF = 1
GM = 2
WM = 3
SKULL = 4

#: Labels of the sample brain (``gpuprep.data.sample_brain``): background and three tissues.
TISSUE_LABELS = MappingProxyType({BACKGROUND: "background", CSF: "csf", GM: "gm", WM: "wm"})

#: Labels of the phantom (``gpuprep.data.phantom``): the tissues plus a skull shell.
PHANTOM_LABELS = MappingProxyType({**TISSUE_LABELS, SKULL: "skull"})

#: Labels that make up the brain mask (everything inside the skull).
BRAIN_LABELS = (CSF, GM, WM)

__all__ = ["BACKGROUND", "BRAIN_LABELS", "CSF", "GM", "PHANTOM_LABELS", "SKULL", "TISSUE_LABELS", "WM"]
