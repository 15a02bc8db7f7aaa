"""The examples run end to end (with tiny settings, so the suite stays fast)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_segmentation_runs_and_maps_back_to_the_scan(capsys):
    scores = _load("train_segmentation").main(
        ["--epochs", "1", "--records", "2", "--channels", "4", "--patch", "32", "--workers", "1"]
    )
    assert set(scores) == {"CSF", "GM", "WM"} and all(0.0 <= v <= 1.0 for v in scores.values())
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed and "Dice on the scan's own grid" in printed
