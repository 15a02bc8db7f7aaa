"""The ``gpuprep`` command: one sub-command per module in this package.

Errors that gpuprep raises on purpose (bad files, bad arguments), every ``OSError`` (a missing
or unwritable file or folder, a full disk) and every ``MemoryError`` are printed as one line,
without a traceback, and the command exits with status 2. Set ``GPUPREP_DEBUG=1`` to get the
traceback instead.

Building the parser imports neither torch nor gpuprep's transforms (each sub-command imports
what it needs in its ``run``), so ``gpuprep --help`` answers at once; the help text is plain
text (the docstrings' reStructuredText markup is removed, :mod:`gpuprep.cli.help_text`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import GpuprepError
from . import demo, info, plan, register, replay, run, segment
from .help_text import strip_markup

COMMANDS = (demo, info, segment, register, replay, plan, run)
#: Set this environment variable to 1 to see the traceback of an error instead of one line.
DEBUG_VARIABLE = "GPUPREP_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="gpuprep",
        description="Fast, correct 3D medical-image preprocessing and augmentation on GPU or CPU.",
    )
    parser.add_argument("--version", action="version", version=f"gpuprep {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in COMMANDS:
        module.add_parser(commands)
    strip_markup(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    try:
        return int(args.run(args) or 0)
    except Exception as error:
        if not isinstance(error, _reported_errors()):
            raise
        if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
            raise
        print(f"gpuprep {args.command}: error: {error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpuprep {args.command}: interrupted", file=sys.stderr)
        return 130


def error_line(error: BaseException) -> str:
    """Describe ``error`` in one line: its message, or what kind of failure it is when it has none.

    Example
    -------
    >>> error_line(OSError(28, "No space left on device"))
    '[Errno 28] No space left on device'
    >>> error_line(MemoryError())
    'out of memory (MemoryError); try a smaller input'
    """
    message = " ".join(str(error).split())
    if isinstance(error, _gpu_memory_error()):
        return f"out of GPU memory ({message[:300]}); try --device cpu or a smaller input"
    if isinstance(error, MemoryError):
        return f"out of memory ({message[:300] or 'MemoryError'}); try a smaller input"
    return message or type(error).__name__


def _gpu_memory_error() -> type[BaseException] | tuple[()]:
    """torch's CUDA out-of-memory error, if torch was imported (a command that never imported it cannot raise it)."""
    torch = sys.modules.get("torch")
    return torch.cuda.OutOfMemoryError if torch is not None else ()


def _reported_errors() -> tuple[type[BaseException], ...]:
    """The errors printed as one line: gpuprep's own, OSError, MemoryError and CUDA out of memory."""
    gpu = _gpu_memory_error()
    return (GpuprepError, OSError, MemoryError, *((gpu,) if gpu else ()))


if __name__ == "__main__":
    sys.exit(main())
