"""Packaging: `ironsight` is one regular package (wheel and editable install), `import ironsight`
stays light, and the dependency ranges agree with the pinned constraints the Makefile installs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (requires-python allows 3.10)

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSTRAINTS = REPO / "deploy" / "constraints.txt"


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, **kw)


def test_import_ironsight_is_light():
    code = (
        "import sys, importlib.metadata as md, ironsight\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'pyarrow', 'pydantic') if m in sys.modules)\n"
        "print(heavy, ironsight.__version__ == md.version('ironsight'))\n"
        "print(ironsight.__file__)\n"
    )
    proc = _python(code, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "[] True"  # nothing heavy on `import ironsight`
    assert lines[1].endswith("jobs/_ironsight/__init__.py")  # the editable install's mapping


def test_the_api_names_are_the_api_modules():
    import ironsight
    import ironsight.jobs.api as api
    from ironsight.cluster.preprocess import Preprocess
    from ironsight.jobs.spec import AuditJob, ClassifyJob

    assert (ironsight.classify, ironsight.audit, ironsight.ModuleSource) == (api.classify, api.audit, api.ModuleSource)
    assert (ironsight.ClassifyJob, ironsight.AuditJob, ironsight.Preprocess) == (ClassifyJob, AuditJob, Preprocess)
    assert set(ironsight.__all__) <= set(dir(ironsight))


def test_an_unknown_attribute_is_an_attribute_error():
    import ironsight

    with pytest.raises(AttributeError, match="has no attribute 'clasify'"):
        ironsight.clasify  # noqa: B018


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds from what the Dockerfile copies (a copy: the shared
    checkout's build/ folder stays out of it)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("cluster", "jobs", "robustness"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--quiet", "--wheel-dir", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = out.glob("ironsight-*.whl")
    return whl


def test_the_wheel_holds_only_the_ironsight_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"ironsight", f"ironsight-{PYPROJECT['project']['version']}.dist-info"}
    for needed in ("ironsight/__init__.py", "ironsight/jobs/api.py", "ironsight/jobs/cli.py",
                   "ironsight/jobs/history/store.py",
                   "ironsight/cluster/models/weights.py", "ironsight/robustness/stats.py"):
        assert needed in names
    assert not [n for n in names if "_ironsight" in n]  # its one file became ironsight/__init__.py
    assert all("/tests/" not in n and "/examples/" not in n for n in names)


def test_the_unpacked_wheel_imports_without_the_source_tree(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (  # modules that do not import torch (slow to import on a busy machine)
        "import ironsight, ironsight.jobs.cli, ironsight.cluster.preprocess, ironsight.robustness\n"
        "print(ironsight.__file__); print(ironsight.cluster.preprocess.__file__)\n"
        "print(ironsight.AuditJob.__module__, ironsight.jobs.cli.__file__.startswith(ironsight.__path__[0]))\n"
    )
    # the unpacked wheel comes first on sys.path, ahead of the editable install's finder
    proc = _python(code, cwd="/", env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == str(site / "ironsight" / "__init__.py")
    assert lines[1] == str(site / "ironsight" / "cluster" / "preprocess.py")
    assert lines[2] == "ironsight.jobs.spec True"


def _constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"{CONSTRAINTS.name}: {line!r} is not NAME==VERSION"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = _constraints()
    project = PYPROJECT["project"]
    declared = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    problems = []
    for text in declared:
        req = Requirement(text)
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name}: not in {CONSTRAINTS.name}")
        elif req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}: pinned {version} is outside {req.specifier}")
    assert not problems, problems


def test_the_core_ranges_are_bounded_above():
    """torch/torchvision import only as a pair, Ray's private APIs move between minors: each
    range names an upper bound (see the comments in pyproject.toml)."""
    bounded = {"torch", "torchvision", "ray", "numpy", "pyarrow", "pydantic", "torchattacks", "opencv-python-headless"}
    for text in PYPROJECT["project"]["dependencies"]:
        req = Requirement(text)
        if req.name in bounded:
            assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), text


def test_the_makefile_installs_with_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    assert "-c deploy/constraints.txt" in makefile
