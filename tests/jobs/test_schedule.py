"""`ironsight schedule`: tick computation, DST, no double fire across restarts, skip vs queue,
and one real end-to-end run of the command (SIGTERM, exit 0, runs in the history).

The scheduler's clock and sleep are injected (a fake clock drives time); everything else is
real: state files on disk, child processes, SQLite history.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ironsight.cluster import synthetic
from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.cron import CronSchedule, TickState
from ironsight.jobs.history import HistoryStore
from ironsight.jobs.schedule import Scheduler, local_launcher

UTC = dt.timezone.utc
IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


class FakeClock:
    """Time that moves only when the scheduler sleeps (or the test says so)."""

    def __init__(self, start: dt.datetime) -> None:
        self.t = start

    def now(self) -> dt.datetime:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += dt.timedelta(seconds=max(seconds, 0.001))


def _scheduler(tmp_path: Path, clock: FakeClock, cron: str, *, tz: str = "UTC",
               command: list[str] | None = None, on_overlap: str = "skip") -> Scheduler:
    return Scheduler(
        job="nightly",
        schedule=CronSchedule(cron, tz),
        state=TickState(tmp_path / "state", "nightly"),
        launch=local_launcher(command or ["true"]),
        on_overlap=on_overlap,
        now=clock.now,
        sleep=clock.sleep,
        poll_s=0.5,
        max_sleep_s=24 * 3600,  # the fake clock needs no wake-ups between ticks
    )


def _run_until(s: Scheduler, clock: FakeClock, end: dt.datetime) -> None:
    """Drive the scheduler's loop with the fake clock until `end`, reaping each child."""
    while clock.now() < end:
        delay = s.step()
        if s.child is not None:
            while s.child.poll() is None:
                time.sleep(0.01)
        clock.sleep(min(delay, (end - clock.now()).total_seconds()))


@pytest.mark.parametrize(("expr", "tz", "after", "expected"), [
    ("0 2 * * *", "UTC", utc(2026, 11, 23, 1, 59), utc(2026, 11, 23, 2, 0)),
    ("0 2 * * *", "UTC", utc(2026, 11, 23, 2, 0), utc(2026, 11, 24, 2, 0)),
    ("0 2 * * *", "Europe/Berlin", utc(2026, 11, 23, 0, 0), utc(2026, 11, 23, 1, 0)),  # CET
    ("0 2 * * *", "Europe/Berlin", utc(2026, 7, 1, 0, 0), utc(2026, 7, 1, 0, 0) + dt.timedelta(
        days=1)),  # CEST: 02:00 local is 00:00 UTC, strictly after
    ("0 3 * * 1-5", "UTC", utc(2026, 11, 21, 12, 0), utc(2026, 11, 23, 3, 0)),  # Sat -> Mon
    ("* * * * * */2", "UTC", utc(2026, 1, 1, 0, 0, 3), utc(2026, 1, 1, 0, 0, 4)),
    ("*/15 * * * *", "America/New_York", utc(2026, 11, 23, 12, 1), utc(2026, 11, 23, 12, 15)),
])
def test_next_tick(expr, tz, after, expected) -> None:
    assert CronSchedule(expr, tz).next_after(after) == expected


@pytest.mark.parametrize(("expr", "tz", "message"), [
    ("every night", "UTC", "is not a cron expression"),
    ("0 25 * * *", "UTC", "is not a cron expression"),
    ("0 2 * * *", "Mars/Olympus", "not an IANA time zone"),
])
def test_bad_cron_or_timezone(expr, tz, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        CronSchedule(expr, tz)


@pytest.mark.parametrize(("expr", "start", "end", "expected"), [
    # Spring forward (Mar 29, 02:00 CET -> 03:00 CEST): 02:30 does not exist; it fires once at
    # 03:00 CEST (01:00 UTC), and at 02:30 CEST (00:30 UTC) the next day.
    ("30 2 * * *", utc(2026, 3, 28, 12), utc(2026, 3, 30, 12),
     [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]),
    # Fall back (Oct 25, 03:00 CEST -> 02:00 CET): 02:30 happens twice; it fires once.
    ("30 2 * * *", utc(2026, 10, 24, 12), utc(2026, 10, 26, 12),
     [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]),
    # A wildcard-hour schedule fires through both passes of the repeated hour: every 30 min
    # of real time, 02:00/02:30 local twice.
    ("*/30 * * * *", utc(2026, 10, 24, 23, 50), utc(2026, 10, 25, 2, 10),
     [utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 0),
      utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 2, 0)]),
])
def test_dst_in_europe_berlin(tmp_path, expr, start, end, expected) -> None:
    clock = FakeClock(start)
    s = _scheduler(tmp_path, clock, expr, tz="Europe/Berlin")
    s.open()
    _run_until(s, clock, end)
    s.close()
    assert s.fired == expected


def test_first_start_runs_nothing_from_the_past(tmp_path) -> None:
    clock = FakeClock(utc(2026, 11, 23, 2, 0, 30))  # 30 s after a tick
    s = _scheduler(tmp_path, clock, "0 2 * * *")
    s.open()
    s.step()
    assert s.fired == [] and s.child is None
    assert TickState(tmp_path / "state", "nightly").load() == utc(2026, 11, 23, 2, 0, 30)


def test_no_tick_fires_twice_across_a_restart_and_missed_ticks_collapse(tmp_path) -> None:
    clock = FakeClock(utc(2026, 11, 23, 1, 0))
    first = _scheduler(tmp_path, clock, "0 * * * *")
    first.open()
    _run_until(first, clock, utc(2026, 11, 23, 2, 30))
    first.close()
    assert first.fired == [utc(2026, 11, 23, 2, 0)]

    # Restart at the same moment: the 02:00 tick is done; nothing fires.
    again = _scheduler(tmp_path, clock, "0 * * * *")
    again.open()
    again.step()
    again.close()
    assert again.fired == []

    # Down from 02:30 to 05:10: 03:00, 04:00 and 05:00 were missed; only 05:00 runs, once.
    clock.t = utc(2026, 11, 23, 5, 10)
    later = _scheduler(tmp_path, clock, "0 * * * *")
    later.open()
    _run_until(later, clock, utc(2026, 11, 23, 6, 30))
    later.close()
    assert later.fired == [utc(2026, 11, 23, 5, 0), utc(2026, 11, 23, 6, 0)]
    saved = json.loads((tmp_path / "state" / "nightly.json").read_text())
    assert saved["last_tick"] == "2026-11-23T06:00:00+00:00"


def test_a_second_scheduler_for_the_same_job_is_refused(tmp_path) -> None:
    clock = FakeClock(utc(2026, 11, 23, 1, 0))
    first = _scheduler(tmp_path, clock, "0 2 * * *")
    first.open()
    try:
        with pytest.raises(InvalidInput, match="another scheduler .* already runs job 'nightly'"):
            _scheduler(tmp_path, clock, "0 2 * * *").open()
    finally:
        first.close()


@pytest.mark.parametrize(("policy", "fired_after_release", "skipped"), [
    ("skip", [utc(2026, 11, 23, 2, 0)], [utc(2026, 11, 23, 2, 1)]),
    ("queue", [utc(2026, 11, 23, 2, 0), utc(2026, 11, 23, 2, 2)], [utc(2026, 11, 23, 2, 1)]),
])
def test_overlap_skip_or_queue(tmp_path, policy, fired_after_release, skipped) -> None:
    release = tmp_path / "release"
    # A real child that runs until the test releases it.
    wait = f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.02)"
    clock = FakeClock(utc(2026, 11, 23, 1, 59, 30))
    s = _scheduler(tmp_path, clock, "* * * * *", command=[sys.executable, "-c", wait],
                   on_overlap=policy)
    s.open()
    try:
        clock.t = utc(2026, 11, 23, 2, 0, 1)
        s.step()
        assert s.fired == [utc(2026, 11, 23, 2, 0)] and s.child is not None
        clock.t = utc(2026, 11, 23, 2, 1, 1)  # the 02:01 tick comes while 02:00 runs
        s.step()
        clock.t = utc(2026, 11, 23, 2, 2, 1)  # 02:02 too (queue: replaces the queued 02:01)
        s.step()
        assert s.fired == [utc(2026, 11, 23, 2, 0)]
        release.write_text("")
        while s.child.poll() is None:
            time.sleep(0.02)
        s.step()
        assert s.fired == fired_after_release
        if policy == "skip":  # skip drops both 02:01 and 02:02
            assert s.skipped == [*skipped, utc(2026, 11, 23, 2, 2)]
        else:
            assert s.skipped == skipped
    finally:
        release.write_text("")
        if s.child is not None:
            s.child.proc.wait(10)
        s.close()


def _tiny_classify_spec(tmp_path: Path, name: str, extra: str = "") -> Path:
    """`spec.yaml` of a classify job `name` over 8 synthetic images into `tmp_path/labels`."""
    synthetic.write_corpus(str(tmp_path / "corpus"), 8, seed=1, rows_per_file=8, row_group_size=8)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"kind: classify\nname: {name}\ninput: {tmp_path / 'corpus'}\n"
        f"output: {tmp_path / 'labels'}\nmodel: demo_cnn\nrandom_weights: true\nactors: 1\n"
        "batch_size: 8\n" + extra)
    return spec


def test_schedule_command_end_to_end(tmp_path) -> None:
    """`ironsight schedule` every 2 s on a tiny classify spec for ~10 s, then SIGTERM."""
    spec = _tiny_classify_spec(tmp_path, "tiny-labels")
    db = tmp_path / "history.db"
    env = {**os.environ, "IRONSIGHT_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [*IRONSIGHT, "schedule", str(spec), "--cron", "* * * * * */2", "--history-db", str(db),
         "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    # Let it fire at least once and keep going ~10 s (ticks during a run are skipped).
    while time.monotonic() < deadline and not (db.exists() and HistoryStore(str(db)).runs()):
        time.sleep(0.5)
    time.sleep(10)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    runs = HistoryStore(str(db)).runs(job="tiny-labels")
    assert runs, err[-3000:]
    assert {r.status for r in runs} == {"succeeded"}, [(r.status, r.error) for r in runs]
    ticks = [r.scheduled_for for r in runs]
    assert all(t is not None and t.second % 2 == 0 for t in ticks)
    assert len(set(ticks)) == len(ticks)  # no tick twice
    state = json.loads((tmp_path / "state" / "tiny-labels.json").read_text())
    assert dt.datetime.fromisoformat(state["last_tick"]) >= max(ticks)
    assert "scheduling classify job 'tiny-labels'" in out
    assert "SIGTERM received" in err
    assert "skipped: the run for" in err  # ticks came during a run and did not start another


def test_a_run_that_cannot_start_does_not_end_the_schedule(tmp_path) -> None:
    clock = FakeClock(utc(2026, 11, 23, 1, 30))
    s = _scheduler(tmp_path, clock, "0 * * * *", command=[str(tmp_path / "no-such-program")])
    s.open()
    _run_until(s, clock, utc(2026, 11, 23, 3, 30))
    s.close()
    assert s.fired == [utc(2026, 11, 23, 2, 0), utc(2026, 11, 23, 3, 0)] and s.child is None


def _submit_fixtures():
    """The real token-authenticated `ray start --head` fixtures of tests/jobs/test_submit.py."""
    import importlib.util

    path = Path(__file__).with_name("test_submit.py")
    spec = importlib.util.spec_from_file_location("_submit_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_submit = _submit_fixtures()
ray_head = _submit.ray_head
authed = _submit.authed


@pytest.mark.cluster
def test_remote_ticks_submit_once_per_tick_even_from_two_schedulers(authed, tmp_path) -> None:
    """--address: each tick is a job with a deterministic id; a second scheduler (another host,
    or a lost state dir) firing the same tick attaches to that job instead of running it again."""
    from ironsight.jobs.rayjobs import job_client
    from ironsight.jobs.schedule import remote_launcher
    from ironsight.jobs.spec_file import load_spec
    from ironsight.jobs.submit import scheduled_submission_id, validated_spec_hash

    spec = _tiny_classify_spec(tmp_path, "remote-labels", "device: cpu\n")
    tick = utc(2026, 11, 23, 2, 0)
    runs = []
    for state_dir in ("a", "b"):
        clock = FakeClock(utc(2026, 11, 23, 1, 59, 59))
        s = Scheduler(job="remote-labels", schedule=CronSchedule("0 2 * * *"),
                      state=TickState(tmp_path / state_dir, "remote-labels"),
                      launch=remote_launcher(str(spec), authed), now=clock.now,
                      sleep=clock.sleep)
        s.open()
        clock.t = utc(2026, 11, 23, 2, 0, 1)
        s.step()
        s.close()
        assert s.fired == [tick]
        runs.append(s.child)
    sid = scheduled_submission_id("remote-labels", validated_spec_hash(load_spec(str(spec))), tick)
    assert [r.submission_id for r in runs] == [sid, sid]
    assert [j.submission_id for j in job_client(authed).list_jobs()].count(sid) == 1
    deadline = time.monotonic() + 300
    while (rc := runs[0].poll()) is None and time.monotonic() < deadline:
        time.sleep(1)
    assert rc == 0, job_client(authed).get_job_logs(sid)[-3000:]
    assert (tmp_path / "labels" / "_SUCCESS").exists()
