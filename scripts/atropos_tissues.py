"""Three-class tissue maps (CSF, GM, WM) of brains by ANTs Atropos, for the tissue evaluation.

``python -m gpuprep.models.evaluate --task brain-tissue --real-heads`` compares gpuprep's tissue
map with Atropos inside the same brain mask. Atropos is run as ANTs' own brain pipelines
start it: k-means initialisation with 3 classes, MRF smoothing 0.1 (1x1x1 neighbourhood),
5 iterations, on the image inside the mask; its classes come out sorted by mean intensity,
so on a T1 they are CSF (1), GM (2) and WM (3), the sulcal and ventricular CSF inside the mask
counting as CSF, as for FSL FAST. It needs ``antspyx`` (in the peers' environment of
``scripts/peer_brain_masks.py``)::

    peers/bin/pip install antspyx
    peers/bin/python scripts/atropos_tissues.py HEAD.nii.gz --mask MASK.nii.gz --output NAME_atropos.nii.gz
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import ants

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("--mask", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    image = ants.image_read(str(args.image)).astype("float32")
    mask = ants.threshold_image(ants.image_read(str(args.mask)), 0.5, 1e9)
    start = time.perf_counter()
    result = ants.atropos(a=image, x=mask, i="kmeans[3]", m="[0.1,1x1x1]", c="[5,0]")
    seconds = time.perf_counter() - start
    tmp = args.output.with_name(args.output.name + ".part.nii.gz")
    ants.image_write(result["segmentation"].astype("uint8"), str(tmp))
    os.replace(tmp, args.output)
    record = {"antspyx": importlib.metadata.version("antspyx"), "seconds": round(seconds, 1),
              "settings": {"i": "kmeans[3]", "m": "[0.1,1x1x1]", "c": "[5,0]"}}
    args.output.with_suffix("").with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
