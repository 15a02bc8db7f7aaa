"""The ``gpuprep`` command: one sub-command per module in this package.

Errors that gpuprep raises on purpose (bad files, bad arguments) are printed as one line,
without a traceback, and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import GpuprepError
from . import demo, info, replay, segment

COMMANDS = (demo, info, segment, replay)


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
    except (GpuprepError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        print(f"gpuprep {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpuprep {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
