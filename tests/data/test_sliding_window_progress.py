"""Sliding-window inference reports its progress through a callback: windows done out of the total."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference as monai_sliding_window

from gpuprep.data.sliding_window import sliding_window_inference
from gpuprep.errors import ConfigError


def test_sliding_window_progress_callback_counts_windows_like_monai():
    inputs = torch.rand(2, 1, 19, 23, 17)
    monai_windows = []
    monai_sliding_window(inputs, (8, 10, 6), 3, lambda w: monai_windows.append(w.shape[0]) or w, overlap=0.25)
    calls = []
    out = sliding_window_inference(inputs, lambda w: w, (8, 10, 6), sw_batch_size=3,
                                   progress=lambda done, total: calls.append((done, total)))
    torch.testing.assert_close(out, inputs)
    total = sum(monai_windows)  # MONAI sends every window of every sample once
    assert [t for _, t in calls] == [total] * len(calls)
    assert [d for d, _ in calls] == sorted({d for d, _ in calls}) and calls[-1][0] == total
    assert len(calls) == -(-total // 3)  # one report per predictor call


def test_sliding_window_progress_rejects_a_non_callable():
    with pytest.raises(ConfigError, match="progress must be True, False or a callable"):
        sliding_window_inference(torch.rand(1, 1, 8, 8, 8), lambda w: w, 4, progress="yes")
