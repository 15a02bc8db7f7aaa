"""The Dockerfiles follow the project's rules (scripts/check_dockerfiles.py), and the checker catches each break.

hadolint itself runs in CI through ``scripts/lint_docker.sh``; these tests cover the rules it does
not know about, each on a crafted Dockerfile, and the shipped ones.
"""

from __future__ import annotations

import doctest
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
SHIPPED = [REPOSITORY / "docker" / "Dockerfile.cpu", REPOSITORY / "docker" / "Dockerfile.cuda"]
GOOD_CPU = """\
FROM python:3.11.11-slim-bookworm
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
USER 1000:1000
ENTRYPOINT ["gpuprep"]
"""


@pytest.fixture(scope="module")
def checker():
    spec = importlib.util.spec_from_file_location("check_dockerfiles", REPOSITORY / "scripts" / "check_dockerfiles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _problems(checker, tmp_path, text, name="Dockerfile.cpu"):
    path = tmp_path / name
    path.write_text(text)
    return checker.problems(path)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_dockerfile_follows_the_rules(checker, path):
    assert checker.problems(path) == []


def test_cpu_dockerfile_installs_the_cpu_wheel_of_torch_as_a_non_root_gpuprep_entrypoint():
    text = SHIPPED[0].read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "\nUSER 1000:1000\n" in text and 'ENTRYPOINT ["gpuprep"]' in text
    assert "\nWORKDIR /data\n" in text and "\nVOLUME /data\n" in text


def test_well_formed_dockerfile_has_no_problem(checker, tmp_path):
    assert _problems(checker, tmp_path, GOOD_CPU) == []


@pytest.mark.parametrize("base", ["python:latest", "python", "python:slim", "nvidia/cuda:latest"])
def test_dockerfile_with_an_unpinned_base_image_is_refused(checker, tmp_path, base):
    found = _problems(checker, tmp_path, GOOD_CPU.replace("python:3.11.11-slim-bookworm", base))
    assert len(found) == 1 and "Dockerfile.cpu:1: FROM" in found[0] and "pinned to a version tag" in found[0]


def test_dockerfile_with_a_base_pinned_by_digest_is_accepted(checker, tmp_path):
    text = GOOD_CPU.replace("python:3.11.11-slim-bookworm", "python@sha256:" + "0" * 64)
    assert _problems(checker, tmp_path, text) == []


@pytest.mark.parametrize("user", ["", "USER root\n", "USER 0:0\n"], ids=["no-user", "root", "uid-0"])
def test_dockerfile_running_as_root_is_refused(checker, tmp_path, user):
    found = _problems(checker, tmp_path, GOOD_CPU.replace("USER 1000:1000\n", user))
    assert len(found) == 1 and "non-root user" in found[0]


def test_dockerfile_whose_last_stage_has_no_user_is_refused(checker, tmp_path):
    found = _problems(checker, tmp_path, GOOD_CPU + "FROM python:3.11.11-slim-bookworm\nENTRYPOINT [\"gpuprep\"]\n")
    assert len(found) == 1 and "non-root user" in found[0]


def test_dockerfile_with_unpinned_torch_is_refused(checker, tmp_path):
    found = _problems(checker, tmp_path, GOOD_CPU.replace('"torch==2.13.0"', "torch"))
    assert len(found) == 1 and "Dockerfile.cpu:2: RUN" in found[0] and "torch==VERSION" in found[0]


def test_dockerfile_with_torch_from_pypi_is_refused(checker, tmp_path):
    text = GOOD_CPU.replace("--index-url https://download.pytorch.org/whl/cpu ", "")
    found = _problems(checker, tmp_path, text)
    assert len(found) == 1 and "--index-url https://download.pytorch.org/whl/" in found[0]


def test_cpu_dockerfile_with_the_cuda_torch_index_is_refused(checker, tmp_path):
    text = GOOD_CPU.replace("whl/cpu", "whl/cu128")
    assert _problems(checker, tmp_path, text, name="Dockerfile.cuda") == []
    found = _problems(checker, tmp_path, text, name="Dockerfile.cpu")
    assert len(found) == 1 and "CPU image must install torch from https://download.pytorch.org/whl/cpu" in found[0]


@pytest.mark.parametrize("entrypoint", ["", "ENTRYPOINT gpuprep\n", 'ENTRYPOINT ["python"]\n'],
                         ids=["none", "shell-form", "other-command"])
def test_dockerfile_without_the_gpuprep_entrypoint_is_refused(checker, tmp_path, entrypoint):
    found = _problems(checker, tmp_path, GOOD_CPU.replace('ENTRYPOINT ["gpuprep"]\n', entrypoint))
    assert len(found) == 1 and 'ENTRYPOINT: the entry point must be ["gpuprep"]' in found[0]


def test_continued_run_line_with_a_comment_inside_is_read_as_one_instruction(checker, tmp_path):
    text = GOOD_CPU.replace('RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu',
                            "RUN pip install --no-cache-dir \\\n    # the CPU index\n"
                            "    --index-url https://download.pytorch.org/whl/cpu \\\n   ")
    runs = [step for step in checker.instructions(text) if step[1] == "RUN"]
    assert runs == [(2, "RUN", 'pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu '
                               '"torch==2.13.0"')]
    assert _problems(checker, tmp_path, text) == []
    found = _problems(checker, tmp_path, text.replace('"torch==2.13.0"', "torch"))
    assert len(found) == 1 and "Dockerfile.cpu:2: RUN" in found[0]


def test_checker_command_exits_1_and_names_the_file_on_a_broken_rule(tmp_path):
    bad = tmp_path / "Dockerfile.cpu"
    bad.write_text(GOOD_CPU.replace("USER 1000:1000\n", "USER root\n"))
    script = REPOSITORY / "scripts" / "check_dockerfiles.py"
    result = subprocess.run([sys.executable, str(script), str(bad)], capture_output=True, text=True)
    assert result.returncode == 1 and f"{bad}:" in result.stdout and "non-root" in result.stdout
    result = subprocess.run([sys.executable, str(script), *map(str, SHIPPED)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_checker_examples_in_its_docstrings_hold(checker):
    result = doctest.testmod(checker)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize("project", ['"."', ".", '".[io]"', "'.[denoise,io]'"])
def test_dockerfile_installing_gpuprep_without_the_models_extra_is_refused(checker, tmp_path, project):
    install = f"RUN pip install --no-cache-dir --constraint constraints.txt {project} && gpuprep --version\n"
    found = _problems(checker, tmp_path, GOOD_CPU.replace("USER 1000:1000\n", install + "USER 1000:1000\n"))
    assert len(found) == 1 and "Dockerfile.cpu:3: RUN" in found[0] and "models extra" in found[0]


@pytest.mark.parametrize("project", ['".[io,models]"', ".[models]", "'.[models,denoise]'"])
def test_dockerfile_installing_gpuprep_with_the_models_extra_is_accepted(checker, tmp_path, project):
    install = f"RUN pip install --no-cache-dir --constraint constraints.txt {project}\n"
    assert _problems(checker, tmp_path, GOOD_CPU.replace("USER 1000:1000\n", install + "USER 1000:1000\n")) == []
