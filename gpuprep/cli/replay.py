"""``gpuprep replay``: rerun the pipeline that wrote an image, from its JSON sidecar.

The sidecar beside a file written by ``SaveImage`` (``gpuprep demo``, or your own pipeline)
holds the whole run: the ``LoadImage`` steps, every processing step with the exact seed of its
random stream, the epoch and sample index, and the ``SaveImage`` step. ``gpuprep replay`` rebuilds
that pipeline, reads the recorded source files (or those given with ``--input``), checks that the
rerun draws the same parameters as the recorded run, and writes the outputs (with their own
sidecars) to a new folder: on the same device they are identical to the originals. The original
outputs are never overwritten unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch and gpuprep's transforms are imported where they are used: building the parser
# (``gpuprep --help``) must stay fast.


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``replay`` sub-command."""
    parser = commands.add_parser(
        "replay",
        help="rerun the pipeline recorded in a JSON sidecar, to identical output files",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sidecar", type=Path, metavar="SIDECAR.json", help="the sidecar of an image gpuprep wrote")
    parser.add_argument("--output-dir", type=Path, metavar="DIR",
                        help="folder for the outputs (default: a new folder beside the sidecar's, named "
                             "<its folder>-replay)")
    parser.add_argument("--input", action="append", type=_key_path, default=[], metavar="KEY=PATH",
                        help="read PATH for image KEY instead of the recorded source file (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow writing over existing files, the original outputs included")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to compute: auto takes the kind of device the run was made on when this "
                             "machine has one, else the CPU (default: auto)")
    parser.set_defaults(run=run)


def default_output_dir(sidecar: Path) -> Path:
    """The default output folder: a sibling of the sidecar's folder, named ``<folder>-replay``.

    Example
    -------
    >>> default_output_dir(Path("/data/out/sub-01_T1w.json")).as_posix()
    '/data/out-replay'
    """
    folder = sidecar.absolute().parent
    return folder.with_name(f"{folder.name}-replay")


def choose_device(name: str, recorded: str | None) -> torch.device:
    """The device for ``--device name``: ``auto`` takes the recorded kind when available, else the CPU.

    Example
    -------
    >>> choose_device("auto", None), choose_device("cpu", "cuda:0")
    (device(type='cpu'), device(type='cpu'))
    """
    import torch

    from ..models.pretrained import resolve_device

    if name == "auto":
        kind = torch.device(recorded).type if recorded else "cpu"
        return torch.device("cuda" if kind == "cuda" and torch.cuda.is_available() else "cpu")
    return resolve_device(name, "--device")


def run(args: argparse.Namespace) -> int:
    """Rebuild the pipeline of ``args.sidecar``, rerun it and print where the outputs went."""
    import torch

    from ..sample import get_history
    from ..transforms.rebuild import rebuild

    output_dir = args.output_dir or default_output_dir(args.sidecar)
    if not args.overwrite and output_dir.resolve() == args.sidecar.absolute().parent.resolve():
        raise ConfigError(f"--output-dir {output_dir} holds the original outputs of {args.sidecar}; "
                          "choose another folder or pass --overwrite")
    rebuilt = rebuild(args.sidecar, inputs=dict(args.input), output_dir=output_dir, overwrite=args.overwrite)
    device = choose_device(args.device, rebuilt.device)
    if rebuilt.device is not None and torch.device(rebuilt.device).type != device.type:
        print(f"gpuprep replay: note: the run was computed on {rebuilt.device}, this rerun on {device.type}; "
              "the outputs may differ by floating-point rounding")
    try:
        out = rebuilt.run(device)
    except FileExistsError as error:
        raise ConfigError(f"{error} (on the command line: --overwrite, or another --output-dir)") from None
    saved = [entry["filename"] for record in get_history(out)[-1:] if record["name"] == "SaveImage"
             for entry in record["params"].values()]
    checked = "same parameters as the recorded run" if rebuilt.recorded_inputs else "inputs given with --input"
    print(f"gpuprep replay: {len(get_history(out)) - 1} steps rerun ({checked})")
    for filename in saved:
        print(f"  wrote {filename}")
    return 0


def _key_path(text: str) -> tuple[str, str]:
    key, sep, path = text.partition("=")
    if not sep or not key or not path:
        raise argparse.ArgumentTypeError(f"expected KEY=PATH, got {text!r}")
    return key, path
