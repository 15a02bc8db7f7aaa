#!/usr/bin/env bash
# The checks that need a GPU, in one short run on a lent CUDA machine (see docs/design.md, Tests):
# the CUDA half of the device-parametrised tests, then the GPU benchmarks, with the machine.
# Prepare here with `bash scripts/gpu_wheels.sh`, then run there (device tool, carry ".whl"):
#   bash scripts/gpu_check.sh "$OUT"
# A second argument picks the device (default cuda): `bash scripts/gpu_check.sh out cpu` runs the same
# steps on the CPU, to check the script end to end without a GPU.
# Results go to OUT_DIR (default ./gpu-check): machine.txt, triton_tests.txt, bench_triton_sampler.txt,
# tests.txt, bench_augment.txt, bench_loader.txt, bench_bias.txt, bench_registration.txt, bench_denoise.txt.
# The whole run stays within 8 minutes: every step's timeout is capped by what is left of that budget.
# TorchIO (it needs SimpleITK, a 50 MB wheel) does not travel, so only peers without it run there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-gpu-check}
DEVICE=${2:-cuda}
THREADS=$(nproc)
mkdir -p "$OUT_DIR"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  nproc; } > "$OUT_DIR/machine.txt" 2>&1
cat "$OUT_DIR/machine.txt"

BUDGET_S=470  # 8 minutes (SECONDS counts from the start, the install included), less a margin
cap() { local left=$((BUDGET_S - SECONDS)); echo $(( $1 < left ? $1 : (left > 1 ? left : 1) )); }

# The fused Triton sampler against the torch path on CUDA (skips, with the reason, if Triton is absent),
# then its timing against grid_sample on a materialised grid (128^3, batches 4 and 32).
timeout "$(cap 120)" python3 -m pytest -q -rs -p no:cacheprovider -o addopts="" \
  tests/functional/test_fused_sampler_triton.py 2>&1 | tail -20 | tee "$OUT_DIR/triton_tests.txt"
timeout "$(cap 60)" python3 benchmarks/bench_triton_sampler.py --device "$DEVICE" --repeats 5 2>&1 \
  | tee "$OUT_DIR/bench_triton_sampler.txt"

# Issue 18: the augmentation pipeline on a batch of 32 x 128^3 against MONAI per sample on the GPU (and
# nnU-Net's 13.5 ms per batch on an A100) (TorchIO does not travel).
timeout "$(cap 150)" python3 benchmarks/bench_augment.py --device "$DEVICE" --batch 32 --skip-torchio --threads "$THREADS" \
  --repeats 5 2>&1 | tee "$OUT_DIR/bench_augment.txt"

# Every test that takes the `device` fixture runs on CUDA too; `-k cuda` selects those runs.
# Modules that import packages absent there (SimpleITK, TorchIO) fail to collect and are listed.
timeout "$(cap 200)" python3 -m pytest -q -k "$DEVICE" -p no:cacheprovider --continue-on-collection-errors \
  -o addopts="" tests 2>&1 | tail -40 | tee "$OUT_DIR/tests.txt"

# The loader with augmentation on the GPU.
timeout "$(cap 120)" python3 benchmarks/bench_loader.py --device "$DEVICE" --skip-torchio --threads "$THREADS" --epochs 2 2>&1 \
  | tee "$OUT_DIR/bench_loader.txt"

# Issue 20: N4 on the device, one seed per field kind and a batch of 4 brains (SimpleITK does not travel).
timeout "$(cap 90)" python3 benchmarks/bench_bias.py --device "$DEVICE" --threads "$THREADS" --seeds 1 --skip-ants 2>&1 \
  | tee "$OUT_DIR/bench_bias.txt"

# Issue 19: registration on the device (the peers do not travel): known transforms, a batch of 8 pairs,
# known deformations.
timeout "$(cap 120)" python3 benchmarks/bench_registration.py --device "$DEVICE" --threads "$THREADS" --seeds 1 \
  --peers none 2>&1 | tee "$OUT_DIR/bench_registration.txt"

timeout "$(cap 180)" python3 benchmarks/bench_denoise.py --device "$DEVICE" --threads "$THREADS" --repeats 3 2>&1 \
  | tee "$OUT_DIR/bench_denoise.txt"
