"""``gpuprep info``: print the grid, orientation and value range of image files."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``info`` sub-command."""
    parser = commands.add_parser("info", help="show shape, spacing, orientation and range of images")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files (NIfTI, MGH, NRRD, ...)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print one block per file."""
    import numpy as np

    from ..functional.orientation import axcodes_of
    from ..io.reader import read_image

    for path in args.paths:
        data, meta = read_image(path)
        affine = meta["affine"].numpy()
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        print(path)
        print(f"  format       {meta.get('format', '?')}")
        print(f"  shape        channels={data.shape[0]} spatial={tuple(data.shape[1:])}")
        print(f"  dtype        {str(data.dtype).removeprefix('torch.')}")
        print(f"  spacing mm   {tuple(round(float(s), 4) for s in spacing)}")
        print(f"  orientation  {axcodes_of(affine)}")
        print(f"  range        [{data.min().item():.6g}, {data.max().item():.6g}]")
        print("  affine       " + "\n               ".join(np.array2string(r, precision=4) for r in affine))
    return 0
