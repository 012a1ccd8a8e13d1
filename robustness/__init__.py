"""Robustness evaluation as a pure library (no Ray): conditions, attacks, suites, metrics,
reports and the release gate. ``ironsight.jobs.audit`` runs it on Ray; nothing here starts Ray.

Pixels are float in [0, 1] (or uint8); models take (N, 3, H, W) in [0, 1] with normalization
as their first layer, so corruption strengths and attack epsilons are in pixel units.
"""

from ironsight.robustness.attacks import DEFAULT_EPSILONS, list_attacks, run_attack
from ironsight.robustness.conditions import (
    IMAGENET_C_CONDITIONS,
    SEVERITIES,
    apply_condition,
    get_condition,
    list_conditions,
    register_condition,
)
from ironsight.robustness.gate import Gate, GateResult, evaluate_gate, load_gate
from ironsight.robustness.report import build_report, text_summary, write_reports
from ironsight.robustness.schema import PREDICTIONS_SCHEMA, REPORT_SCHEMA_VERSION, Example
from ironsight.robustness.suites import AttackSpec, Suite, get_suite, list_suites

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
