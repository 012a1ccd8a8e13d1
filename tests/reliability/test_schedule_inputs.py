"""`ironsight schedule` with inputs that used to end in a traceback: a job name too long for a
file name, and a cron expression that can never fire. Both are refused when the schedule is
created, with one line and exit 2, before any state file is written."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.cron import MAX_JOB_NAME, CronSchedule, TickState
from tests.reliability.conftest import cli

UTC = dt.timezone.utc


def _spec(tmp_path, name: str):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "kind": "audit", "name": name, "input": str(tmp_path / "eval"),
        "output": str(tmp_path / "out"), "model": "demo_cnn", "random_weights": True,
    }))
    return path


def _refused(result, *needles: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # one line that says what is wrong
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_job_name_too_long_for_a_file_name_exits_2_naming_the_limit(tmp_path):
    # 260 characters: `<name>.lock` was over the 255-byte file-name limit (ENAMETOOLONG).
    state = tmp_path / "state"
    result = cli("schedule", str(_spec(tmp_path, "n" * 260)), "--cron", "0 2 * * *",
                 "--state-dir", str(state), timeout=120)
    _refused(result, "260 characters", f"at most {MAX_JOB_NAME} characters")
    assert not state.exists()  # refused before anything was created


@pytest.mark.parametrize("cron", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4 *", "0 0 31 2 * 5"])
def test_a_cron_that_never_fires_is_refused_when_the_schedule_is_created(cron):
    with pytest.raises(InvalidInput, match="the cron expression never fires"):
        CronSchedule(cron, "Europe/Berlin")


def test_a_cron_that_never_fires_exits_2_from_the_command(tmp_path):
    state = tmp_path / "state"
    result = cli("schedule", str(_spec(tmp_path, "nightly")), "--cron", "0 0 31 2 *",
                 "--state-dir", str(state), timeout=120)
    _refused(result, "'0 0 31 2 *'", "never fires")
    assert not state.exists()


@pytest.mark.parametrize(("cron", "after", "expected"), [
    ("0 0 29 2 *", dt.datetime(2026, 3, 1, tzinfo=UTC), dt.datetime(2028, 2, 29, tzinfo=UTC)),
    ("0 0 L 2 *", dt.datetime(2026, 3, 1, tzinfo=UTC), dt.datetime(2027, 2, 28, tzinfo=UTC)),
    # Day-of-month and day-of-week both restricted: either matches (cron's OR rule).
    ("0 0 31 2 1", dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2026, 2, 2, tzinfo=UTC)),
], ids=["leap-day", "last-day-of-february", "dom-or-dow"])
def test_rare_but_real_dates_are_accepted(cron, after, expected):
    assert CronSchedule(cron).next_after(after) == expected


def test_the_longest_allowed_name_keeps_its_state_across_a_restart(tmp_path):
    name = "x" * MAX_JOB_NAME
    tick = dt.datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    state = TickState(tmp_path, name)
    state.lock()
    state.save(tick)
    state.unlock()
    assert TickState(tmp_path, name).load() == tick
    with pytest.raises(InvalidInput, match=f"at most {MAX_JOB_NAME} characters"):
        TickState(tmp_path / "other", name + "x")
    assert not (tmp_path / "other").exists()
