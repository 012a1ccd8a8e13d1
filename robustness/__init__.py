"""Robustness evaluation as a pure library (no Ray): conditions, attacks, suites, metrics,
reports and the release gate. ``ironsight.jobs.audit`` runs it on Ray; nothing here starts Ray.

Pixels are float in [0, 1] (or uint8); models take (N, 3, H, W) in [0, 1] with normalization
as their first layer, so corruption strengths and attack epsilons are in pixel units.
"""

import importlib
from typing import Any

# name -> the submodule that defines it. Loaded on first use (PEP 562), so that importing one
# light submodule (``ironsight.robustness.conditions`` for its SEVERITIES, ``suites`` for a
# suite's names) does not import torch and torchattacks through ``attacks``: the CLI checks a
# job's flags before it imports torch.
_HOMES = {
    "DEFAULT_EPSILONS": "attacks", "list_attacks": "attacks", "run_attack": "attacks",
    "IMAGENET_C_CONDITIONS": "conditions", "SEVERITIES": "conditions", "apply_condition": "conditions",
    "get_condition": "conditions", "list_conditions": "conditions", "register_condition": "conditions",
    "Gate": "gate", "GateResult": "gate", "evaluate_gate": "gate", "load_gate": "gate",
    "build_report": "report.build", "text_summary": "report.text", "write_reports": "report.write",
    "PREDICTIONS_SCHEMA": "schema", "REPORT_SCHEMA_VERSION": "schema", "Example": "schema",
    "AttackSpec": "suites", "Suite": "suites", "get_suite": "suites", "list_suites": "suites",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_EPSILONS",
    "IMAGENET_C_CONDITIONS",
    "PREDICTIONS_SCHEMA",
    "REPORT_SCHEMA_VERSION",
    "SEVERITIES",
    "AttackSpec",
    "Example",
    "Gate",
    "GateResult",
    "Suite",
    "apply_condition",
    "build_report",
    "evaluate_gate",
    "get_condition",
    "get_suite",
    "list_attacks",
    "list_conditions",
    "list_suites",
    "load_gate",
    "register_condition",
    "run_attack",
    "text_summary",
    "write_reports",
]
