"""pytest-benchmark version of bench_preprocess.py: ``python -m pytest benchmarks -p no:xdist``.

Not part of the test suite (``tests/`` only); each test times one library on the same input.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _common import mni_t1_and_tissue
from bench_preprocess import gpuprep_pipeline, monai_pipeline, torchio_pipeline


@pytest.fixture(scope="module")
def mni():
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    t1, labels, affine = mni_t1_and_tissue(1)
    return torch.from_numpy(t1)[None], torch.from_numpy(labels)[None], affine


@pytest.mark.parametrize(
    "name, make",
    [
        ("gpuprep-default", lambda: gpuprep_pipeline("cpu")),
        ("gpuprep-plain-linear", lambda: gpuprep_pipeline("cpu", anti_aliasing=False)),
        ("gpuprep-plain-linear-no-gaussian", lambda: gpuprep_pipeline("cpu", anti_aliasing=False, gaussian=False)),
        ("monai", monai_pipeline),
        ("torchio-no-gaussian", torchio_pipeline),
    ],
)
def test_preprocess_pipeline(benchmark, mni, name, make):
    run = make()
    benchmark.pedantic(run, args=mni, rounds=5, warmup_rounds=1)
