"""Registration: rigid, affine (and, to come, deformable) alignment on the device, batched.

:func:`register` aligns a moving image to a fixed one and returns a :class:`RegistrationResult`
with the world matrix (RAS mm, fixed world to moving world), the metric per iteration and the time.
"""

from .register import RegistrationResult, register

__all__ = ["RegistrationResult", "register"]
