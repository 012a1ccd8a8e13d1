"""The examples in the docstrings of ``ironsight.cluster``, ``ironsight.jobs`` and
``ironsight.robustness`` run, one test per module, imported as installed (``ironsight.*``).

pytest's own ``--doctest-modules`` would import ``cluster/corpus.py`` by its path as a second
module (``cluster.corpus``) beside ``ironsight.cluster.corpus``, with its own registries and
classes; here each module is imported by its ``ironsight.*`` name, once, and its doctests run
with :mod:`doctest`'s own flags (an example that wants ``...`` says so).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import io
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ironsight

PACKAGES = ("ironsight.cluster", "ironsight.jobs", "ironsight.robustness")
# jobs/_ironsight/__init__.py is the top-level package `ironsight` itself (package-dir), found
# again under ironsight.jobs by walking the folder; it is tested once, as `ironsight`.
ALIASES = {"ironsight.jobs._ironsight"}


def _module_names() -> list[str]:
    names = ["ironsight"]
    for package in PACKAGES:
        names.append(package)
        path = importlib.import_module(package).__path__
        names += [m.name for m in pkgutil.walk_packages(path, package + ".")]
    return sorted(set(names) - ALIASES)


MODULES = _module_names()


def test_every_source_module_is_found():
    repo = Path(ironsight.__file__).resolve().parents[2]
    files = {p.resolve() for d in ("cluster", "jobs", "robustness") for p in (repo / d).rglob("*.py")}
    found = {Path(importlib.util.find_spec(n).origin).resolve() for n in MODULES}
    assert files - found == set()


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=0)
    out = io.StringIO()
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=out.write)
    assert runner.failures == 0, out.getvalue()
    # an example that the finder misses (in a comment, a nested function) would never run
    source = Path(module.__file__).read_text()
    if ">>> " in source:
        assert runner.tries > 0, f"{name} has examples but doctest finds none"


def test_importing_every_module_needs_no_gpu_database_or_network(tmp_path):
    """A fresh interpreter imports every module with no GPU, no history database, and an
    object store that refuses connections; nothing is written, and Ray is not started."""
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "ray = sys.modules.get('ray')\n"
        "assert ray is None or not ray.is_initialized(), 'importing started Ray'\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "IRONSIGHT_", "RAY_"))}
    env.update(CUDA_VISIBLE_DEVICES="", AWS_ENDPOINT_URL="http://127.0.0.1:9",
               AWS_ACCESS_KEY_ID="none", AWS_SECRET_ACCESS_KEY="none",
               IRONSIGHT_HISTORY_URL="postgresql+psycopg://nobody@127.0.0.1:9/none")
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    assert list(work.iterdir()) == []
