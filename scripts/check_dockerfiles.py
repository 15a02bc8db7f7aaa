"""Check gpuprep's Dockerfiles for the rules hadolint does not know about (and its key ones).

``scripts/lint_docker.sh`` runs this after hadolint, and instead of it where hadolint is not
installed. The rules, each reported as ``FILE:LINE: instruction: rule``:

- every ``FROM`` names a version tag (a tag with a digit) or a digest, never ``latest`` or no tag;
- the image ends as a non-root user (a ``USER`` after the last ``FROM``, not ``root`` nor uid 0);
- torch is pinned (``torch==X``) and comes from PyTorch's own index (``--index-url``); in a
  ``*.cpu`` Dockerfile that index is the CPU one, since a plain pin pulls the CUDA build;
- the entry point is the ``gpuprep`` command, in exec form (``ENTRYPOINT ["gpuprep"]``);
- gpuprep (``pip install .``) is installed with the ``models`` extra (``".[io,models]"``): the images
  run ``gpuprep segment``, whose U-Nets need MONAI.

Usage: ``python scripts/check_dockerfiles.py docker/Dockerfile.cpu docker/Dockerfile.cuda``
(exit status 1 and one line per problem when a rule is broken).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

TORCH_INDEX = "https://download.pytorch.org/whl/"


def instructions(text: str) -> list[tuple[int, str, str]]:
    """The ``(line number, INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined.

    >>> instructions("# comment\\nFROM python:3.11 AS base\\nRUN a \\\\\\n && b\\n")
    [(2, 'FROM', 'python:3.11 AS base'), (3, 'RUN', 'a && b')]
    """
    found, pending, start = [], "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        pending += " " + stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        found.append((start, keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return found


def problems(path: Path) -> list[str]:
    """Every broken rule of the Dockerfile at ``path``, as ``FILE:LINE: instruction: rule`` lines.

    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "Dockerfile.cpu"
    >>> _ = bad.write_text('FROM python:latest\\nRUN pip install torch\\nENTRYPOINT ["gpuprep"]\\n')
    >>> for problem in problems(bad): print(problem.split(": ", 1)[1])
    FROM python:latest: the base image must be pinned to a version tag or a digest, not 'latest'
    RUN pip install torch: torch must be pinned (torch==VERSION) and installed with --index-url https://download.pytorch.org/whl/...
    USER: the image must end as a non-root user (a USER after the last FROM, not root nor uid 0)
    """
    steps = instructions(path.read_text())
    found = [f"{path}:{line}: {keyword} {arguments}: {rule}" for line, keyword, arguments in steps
             for rule in _rules(keyword, arguments, cpu=path.name.endswith(".cpu"))]
    last_from = max((index for index, (_, keyword, _) in enumerate(steps) if keyword == "FROM"), default=None)
    if last_from is None:
        found.append(f"{path}:1: FROM: the Dockerfile has no FROM")
        return found
    users = [arguments for _, keyword, arguments in steps[last_from:] if keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        line = steps[-1][0]
        found.append(f"{path}:{line}: USER: the image must end as a non-root user "
                     "(a USER after the last FROM, not root nor uid 0)")
    if not any(keyword == "ENTRYPOINT" and _exec_form(arguments)[:1] == ["gpuprep"] for _, keyword, arguments in steps):
        found.append(f'{path}:{steps[-1][0]}: ENTRYPOINT: the entry point must be ["gpuprep"] (exec form)')
    return found


def _rules(keyword: str, arguments: str, cpu: bool) -> list[str]:
    if keyword == "FROM":
        image = next(word for word in arguments.split() if not word.startswith("--"))
        if "@sha256:" in image:
            return []
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if tag == "latest" or not re.search(r"\d", tag):
            return [f"the base image must be pinned to a version tag or a digest, not {tag or 'no tag'!r}"]
    if keyword == "RUN" and re.search(r"pip3? install", arguments) and re.search(r"(?<![\w-])torch\b", arguments):
        pinned = re.search(r"(?<![\w-])torch==[\w.${}]+", arguments)
        index = re.search(r"--index-url[ =]\"?(\S+?)\"?(?:\s|$)", arguments)
        if not pinned or not index or not (index.group(1).startswith(TORCH_INDEX) or index.group(1).startswith("$")):
            return [f"torch must be pinned (torch==VERSION) and installed with --index-url {TORCH_INDEX}..."]
        if cpu and index.group(1) != TORCH_INDEX + "cpu":
            return [f"a CPU image must install torch from {TORCH_INDEX}cpu (a plain pin pulls the CUDA build)"]
    if keyword == "RUN" and re.search(r"pip3? install", arguments) and _without_models_extra(arguments):
        return ['gpuprep must be installed with the models extra (".[io,models]"): '
                "the image runs `gpuprep segment`, whose U-Nets need MONAI"]
    return []


def _without_models_extra(arguments: str) -> bool:
    """Tell whether a ``pip install`` installs the project (``.``, ``".[io]"``) without its ``models`` extra.

    >>> _without_models_extra('pip install --constraint c.txt ".[io]" && gpuprep --version')
    True
    >>> _without_models_extra('pip install ".[io,models]"'), _without_models_extra("pip install ./wheels/x.whl")
    (False, False)
    """
    projects = re.findall(r"""(?:^|\s)["']?\.(?:\[([\w,-]*)\])?["']?(?=\s|$)""", arguments)
    return any("models" not in extras.split(",") for extras in projects)


def _exec_form(arguments: str) -> list[str]:
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def main(argv: list[str]) -> int:
    """Print every problem of the Dockerfiles named in ``argv``; 1 if there is any, else 0."""
    found = [problem for name in argv for problem in problems(Path(name))]
    print("\n".join(found) if found else f"check_dockerfiles: {len(argv)} Dockerfile(s) follow the rules")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
