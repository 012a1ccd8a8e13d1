"""Ironsight: distributed bulk labeling and robustness audits for image classifiers, on Ray.

This file is the ``ironsight`` package itself (``pyproject.toml`` maps ``ironsight`` to
``jobs/_ironsight``; its three sub-packages stay in the repository's top-level folders):

| import                  | folder        | what                                                   |
|-------------------------|---------------|--------------------------------------------------------|
| ``ironsight``           | jobs/_ironsight | this file: ``__version__`` and the Python API below  |
| ``ironsight.cluster``   | cluster/      | Ray and bytes: storage, corpus planning, decode, models, predictors, sink |
| ``ironsight.jobs``      | jobs/         | the CLI, job specs, the audit job, run history         |
| ``ironsight.robustness``| robustness/   | conditions, attacks, suites, metrics, reports, gate    |

The Python API (:mod:`ironsight.jobs.api`) is re-exported here. Names are loaded on first use,
so ``import ironsight`` imports neither torch nor Ray:

>>> import ironsight
>>> ironsight.__version__ == __import__("importlib.metadata").metadata.version("ironsight")
True

| name                 | what                                                              |
|----------------------|-------------------------------------------------------------------|
| ``classify(...)``    | bulk-label a Parquet corpus; returns a ``ClassifyResult``         |
| ``audit(...)``       | robustness audit of a registered, card-described or in-memory model; returns an ``AuditOutcome`` |
| ``ClassifyJob``, ``AuditJob`` | the job specs the CLI builds (``ironsight.jobs.spec``)   |
| ``ModuleSource``     | an in-memory ``torch.nn.Module`` as a model source                |
| ``Preprocess``       | how a model wants its pixels (``ironsight.cluster.preprocess``)   |
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "AuditJob",
    "AuditOutcome",
    "ClassifyJob",
    "ClassifyResult",
    "ModuleSource",
    "Preprocess",
    "__version__",
    "audit",
    "classify",
]

# name -> module that defines it; imported on first attribute access (PEP 562)
_LAZY = {
    "classify": "ironsight.jobs.api",
    "audit": "ironsight.jobs.api",
    "ClassifyResult": "ironsight.jobs.api",
    "AuditOutcome": "ironsight.jobs.api",
    "ModuleSource": "ironsight.jobs.api",
    "ClassifyJob": "ironsight.jobs.spec",
    "AuditJob": "ironsight.jobs.spec",
    "Preprocess": "ironsight.cluster.preprocess",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ironsight")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__version__ = _version()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ironsight' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
