"""Which compiled copy of a numba kernel to call: parallel with torch's thread count, or serial.

Every numba kernel of the package is compiled twice (:func:`jit_pair`): with ``parallel=True``
and without threads (``*_serial``). :func:`pick_kernel` takes the serial copy for one thread,
for processes forked after the parent started numba's thread pool (GNU OpenMP is not fork-safe:
DataLoader workers), and for threads other than the main one when numba's threading layer is
``workqueue``, which is not thread-safe; otherwise the parallel one, with as many threads as
torch uses. So :class:`~gpuprep.DeviceLoader`'s background thread augments with every thread
where numba's layer is OpenMP or TBB.

Example
-------
>>> import types
>>> module = types.SimpleNamespace(add=lambda a: a + 1, add_serial=lambda a: a + 1)
>>> pick_kernel(module, "add")(1)
2
"""

from __future__ import annotations

import os
import threading
import types
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["jit_pair", "pick_kernel"]

# The process whose main thread started numba's thread pool (the first parallel call).
_POOL_OWNER: list[int] = []


def pick_kernel(module: Any, name: str) -> Callable:
    """``module.name`` (parallel, numba set to torch's thread count) where that is safe, else ``module.name_serial``.

    Parameters
    ----------
    module:
        The module holding both compiled copies.
    name:
        The kernel's name; the serial copy is ``name + "_serial"``.
    """
    import numba

    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    forked = bool(_POOL_OWNER) and _POOL_OWNER[0] != os.getpid()
    other_thread = threading.current_thread() is not threading.main_thread()
    if threads < 2 or forked or (other_thread and not _thread_safe_layer()):
        return getattr(module, name + "_serial")
    if not _POOL_OWNER:
        _POOL_OWNER.append(os.getpid())
    numba.set_num_threads(threads)
    return getattr(module, name)


def _thread_safe_layer() -> bool:
    """Whether numba's threading layer (chosen now if no parallel kernel has run yet) is thread-safe."""
    import numba

    try:
        from numba.np.ufunc.parallel import _launch_threads  # chooses and loads the layer, compiles nothing

        _launch_threads()
        return numba.threading_layer() != "workqueue"
    except (ImportError, ValueError, RuntimeError):  # a numba without this private function: stay serial
        return False


def jit_pair(function: Callable) -> tuple[Callable, Callable]:
    """``function`` compiled by numba (cached on disk) with threads and without.

    The serial copy gets its own name (``*_serial``), which keys numba's cache.
    """
    import numba

    copy = types.FunctionType(function.__code__, function.__globals__, function.__name__ + "_serial",
                              function.__defaults__, function.__closure__)
    copy.__qualname__, copy.__doc__ = function.__qualname__ + "_serial", function.__doc__
    return (numba.njit(parallel=True, cache=True, nogil=True)(function),
            numba.njit(parallel=False, cache=True, nogil=True)(copy))
