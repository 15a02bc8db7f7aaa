#!/usr/bin/env bash
# Download, here, the wheels that the lent GPU machine lacks (it has torch, scipy, scikit-image,
# pytest and numba, but no registry access) into .whl/, which git ignores, for the device tool's
# `carry`. Python 3.12 on x86-64 there. About 17 MB: nibabel and MONAI (gpuprep's own
# dependencies) and nilearn (the MNI152 template the benchmarks use).
# Usage: bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "nibabel>=5" "monai==1.6.1" "nilearn>=0.10"
ls -la .whl
