"""Optional dependencies: import one where it is used, or say which extra installs it.

MONAI is the ``models`` extra (``pip install "gpuprep[models]"``): the shipped U-Nets are MONAI
networks (:func:`gpuprep.models.build_unet`, the segmentation transforms and ``gpuprep segment``),
training uses MONAI's Dice + cross-entropy loss, and ``gp.to_monai`` makes MONAI ``MetaTensor``s.
Everything else (``import gpuprep``, the transforms, IO, data, ``gpuprep demo``) works without it.
gpuprep recognises MetaTensors by duck typing (:mod:`gpuprep.foreign`), so adopting them needs no
MONAI import either.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

#: How to install MONAI with gpuprep.
MONAI_INSTALL = 'pip install "gpuprep[models]"'


def require_monai(purpose: str, module: str = "monai") -> ModuleType:
    """Import ``module`` of MONAI, or raise :class:`~gpuprep.errors.MissingDependencyError` naming the extra.

    Parameters
    ----------
    purpose:
        What needs MONAI, for the message (``"gp.to_monai"``, ``"the gpuprep U-Net"``).
    module:
        The module to import: ``"monai"`` or one of its submodules (``"monai.losses"``).

    Example
    -------
    >>> require_monai("gp.to_monai", "monai.data").MetaTensor.__name__
    'MetaTensor'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(f"{purpose} needs MONAI ({error}); install it with: {MONAI_INSTALL}") from None
