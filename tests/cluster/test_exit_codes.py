"""The one exit-code table (cluster/errors.py): every code is documented in docs/cli.md, every
exception maps onto it, and the commands that pass codes on use it."""

from __future__ import annotations

import re
from pathlib import Path

from ironsight.cluster import errors
from ironsight.cluster.storage_errors import StorageError
from ironsight.jobs import submit

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_every_exit_code_has_one_name_a_meaning_and_a_row_in_docs_cli() -> None:
    codes = {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")
             and isinstance(value, int)}
    assert len(set(codes.values())) == len(codes), codes  # no code under two names
    assert set(codes.values()) == set(errors.EXIT_MEANINGS)
    section = DOCS.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| `(\d+)` +\|", section, re.MULTILINE)}
    assert documented == set(errors.EXIT_MEANINGS)


def test_exceptions_exit_with_the_codes_of_the_table() -> None:
    assert errors.InvalidInput("x").exit_code == errors.EXIT_INVALID == 2
    assert StorageError("x").exit_code == errors.EXIT_INVALID
    assert errors.JobFailed("x").exit_code == errors.IronsightError("x").exit_code == errors.EXIT_FAILED == 1
    assert errors.GateFailed("x").exit_code == errors.EXIT_GATE_FAILED == 3
    assert (errors.EXIT_REGRESSED, errors.EXIT_INTERRUPTED, errors.EXIT_BROKEN_PIPE,
            errors.EXIT_SIGTERM) == (4, 130, 141, 143)


def test_submit_passes_the_runs_own_codes_through() -> None:
    assert [submit.exit_code_of("FAILED", code) for code in (2, 3, 4, 1, 137)] == [2, 3, 4, 1, 1]
    assert submit.exit_code_of("SUCCEEDED", 0) == errors.EXIT_OK
