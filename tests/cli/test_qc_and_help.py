"""``gpuprep --help`` is fast (no torch) and plain text; ``gpuprep segment`` shows the windows done."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import gpuprep
from gpuprep.cli import main as cli_main
from gpuprep.cli import segment
from gpuprep.cli.main import main
from gpuprep.models import pretrained
from tests.models.test_pretrained import tiny_checkpoint

ROOT = Path(gpuprep.__file__).resolve().parent.parent
RST_MARKUP = ("``", ":func:", ":class:", ":mod:", ":meth:", ":data:", ":attr:", ":ref:", ":doc:", "`_")


def _python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout of gpuprep."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_help_parser_is_built_without_importing_torch():
    done = _python(
        "import sys, gpuprep.cli.main as m\n"
        "parser = m.build_parser()\n"
        "for argv in (['demo'], ['info', 'a.nii'], ['segment', 'a.nii', 'b.nii'], ['replay', 'a.json']):\n"
        "    parser.parse_args(argv)\n"
        "heavy = [name for name in ('torch', 'numpy', 'gpuprep.transforms', 'gpuprep.io') if name in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_lazy_package_exports_every_name_and_registers_every_transform():
    done = _python(
        "import sys, gpuprep as gp\n"
        "assert 'torch' not in sys.modules\n"
        "from gpuprep.transforms.base import REGISTRY, registered_transform\n"
        "assert 'SegmentBrain' not in REGISTRY  # gpuprep.models is not loaded yet\n"
        "assert registered_transform('SegmentBrain').__name__ == 'SegmentBrain'\n"
        "assert registered_transform('RandPatches').__name__ == 'RandPatches'\n"
        "names = list(gp.__all__)\n"
        "missing = [name for name in names if not hasattr(gp, name)]\n"
        "namespace = {}\n"
        "exec('from gpuprep import *', namespace)\n"
        "assert not missing and set(names) <= set(namespace), missing\n"
        "assert 'RandAffine' in names and 'Compose' in dir(gp) and gp.data.phantom\n"
        "print(len(names))\n"
    )
    assert done.returncode == 0 and int(done.stdout) > 80, done.stderr


def test_help_text_has_no_rst_markup(capsys):
    parser = cli_main.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) >= {"demo", "info", "segment", "replay"}
    for argv in ([], *([name] for name in commands)):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        text = capsys.readouterr().out
        assert "usage: gpuprep" in text
        found = [markup for markup in RST_MARKUP if markup in text]
        assert not found, (argv, found)


def test_segment_task_choices_are_the_models_tasks():
    assert segment.TASKS == pretrained.TASKS


@pytest.fixture
def small_head(tmp_path):
    shape = (30, 28, 20)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    # Constant background: taken as skull-stripped. The blob spans more than one 16^3 window of the
    # tiny model's 2 mm grid (SegmentBrain's windows cover only the blob's bounding box).
    data = (100 * (np.linalg.norm(index - np.array(shape) / 2, axis=-1) < 12) + 20).astype(np.int16)
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 1.5, 1.0])), path)
    return path


@pytest.fixture
def windows_seen(monkeypatch):
    """The number of windows the network of ``gpuprep segment`` is run on (counted by a forward hook)."""
    seen = []
    original = pretrained.load_pretrained

    def spied(*args, **kwargs):
        model = original(*args, **kwargs)
        model.register_forward_hook(lambda _, inputs, __: seen.append(inputs[0].shape[0]))
        return model

    monkeypatch.setattr(pretrained, "load_pretrained", spied)
    return seen


def test_segment_progress_shows_windows_done_of_total(small_head, tmp_path, capsys, windows_seen):
    weights = tiny_checkpoint(tmp_path, "brain-tissue")
    argv = ["segment", str(small_head), str(tmp_path / "seg.nii.gz"), "--weights", str(weights), "--device", "cpu",
            "--no-flip-average", "--no-refine", "--progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    counts = [(int(done), int(total)) for done, total in re.findall(r"(\d+)/(\d+) \[", captured.err)]
    assert counts, captured.err
    total = sum(windows_seen)  # every window the network saw, once (no flip averaging)
    assert total > 1 and counts[-1] == (total, total)
    assert "window" in captured.err and "window" not in captured.out  # the bar goes to stderr only


def test_segment_no_progress_draws_no_bar(small_head, tmp_path, capsys):
    weights = tiny_checkpoint(tmp_path, "brain-mask")
    argv = ["segment", str(small_head), str(tmp_path / "seg.nii.gz"), "--weights", str(weights), "--device", "cpu",
            "--no-progress"]
    assert main(argv) == 0
    assert "window" not in capsys.readouterr().err
