"""The example specs, suite and gate under deploy/examples/ stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from ironsight.jobs.spec import load_spec
from ironsight.robustness.gate import load_gate
from ironsight.robustness.suites import get_suite

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
SPECS = sorted(p for p in EXAMPLES.glob("*.yaml") if p.stem not in ("gate", "suite-nightly"))


def test_there_are_examples_of_each_kind():
    kinds = {load_spec(str(p)).kind for p in SPECS}
    assert kinds == {"classify", "audit"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_example_spec_is_valid(path):
    spec = load_spec(str(path))
    assert spec.name and spec.input and spec.output


def test_example_gate_is_valid():
    gate = load_gate(EXAMPLES / "gate.yaml")
    assert gate.clean_accuracy_min == 0.85


def test_example_suite_is_valid():
    suite = get_suite(str(EXAMPLES / "suite-nightly.yaml"))
    assert len(suite.conditions) == 7 and suite.severities == (1, 3, 5)
