"""`ironsight schedule`: run a job spec on a cron schedule, from this machine.

A long-running local scheduler (for Kubernetes use `ironsight deploy render --cron`). Each tick
runs `ironsight run SPEC` as a child process (a crashing run cannot take the scheduler down),
or, with `--address`, submits the spec to a Ray cluster through `ironsight.jobs.submit` with the
deterministic submission id `scheduled_submission_id(job, spec hash, tick)`.

Rules (each one tested in tests/jobs/test_schedule.py):

- **Cron, DST, job names**: `ironsight.jobs.cron` (`CronSchedule`, `check_job_name`): 5 or 6
  fields in `--timezone`, refused at once when it never fires; a skipped wall-clock time fires
  once after the jump, a repeated one once (fixed hours) or in both passes (`*` hours).
- **Never the same tick twice**: the last handled tick of each job (fired, skipped or caught
  up) is persisted in `STATE_DIR/<job>.json` (`ironsight.jobs.cron.TickState`; atomically,
  before the run starts), and only ticks after it fire, also after a restart. A lock file keeps
  two schedulers off one job. Persisting before starting means a scheduler killed between the
  two loses that tick rather than running it twice.
- **Catch-up**: ticks missed while the scheduler was down collapse into one: the latest missed
  tick runs once at start; older ones are logged and dropped. On the very first start nothing
  in the past runs.
- **Overlap**: when a tick comes while the previous run is still going, `--on-overlap skip`
  (default) drops it; `queue` runs it as soon as the previous run ends (at most one queued
  run: a newer tick replaces a queued one).
- **Shutdown**: SIGTERM or SIGINT stops firing; the running child is waited for, or with
  `--kill-on-exit` interrupted (SIGINT, so its run is recorded as failed; SIGKILL after 30 s).
  The scheduler then exits 0. A queued tick is not persisted, so it is caught up at the
  next start.

Runs started locally record themselves in the run history (`ironsight history`) with the tick
they ran for (`scheduled_for`); the scheduler passes `--history-db` on to them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ironsight.cluster.errors import EXIT_FAILED, EXIT_OK, InvalidInput
from ironsight.jobs.cron import UTC, CronSchedule, TickState, check_job_name
from ironsight.jobs.history.db import history_url
from ironsight.jobs.history.recorder import SCHEDULED_FOR_ENV

__all__ = ["LocalRun", "RemoteRun", "RunHandle", "Scheduler", "add_commands", "local_launcher",
           "remote_launcher"]

log = logging.getLogger("ironsight.schedule")
OVERLAP_POLICIES = ("skip", "queue")
KILL_GRACE_S = 30.0  # an interrupted run gets this long to record its end before SIGKILL
MAX_SLEEP_S = 60.0  # wake at least this often, so a clock jump is noticed within a minute


class RunHandle(Protocol):
    """A started run: `poll()` is None while it runs, else its exit status."""

    def poll(self) -> int | None: ...
    def interrupt(self, grace_s: float) -> None: ...


class LocalRun:
    """A child process running one scheduled job, in its own session."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def poll(self) -> int | None:
        return self.proc.poll()

    def interrupt(self, grace_s: float = KILL_GRACE_S) -> None:
        """SIGINT (the run records itself as failed), then SIGKILL after `grace_s`."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def local_launcher(
    command: list[str], env: dict[str, str] | None = None
) -> Callable[[dt.datetime], LocalRun]:
    """Start `command` per tick, with `IRONSIGHT_SCHEDULED_FOR` set to the tick (ISO, UTC)."""

    def launch(tick: dt.datetime) -> LocalRun:
        child_env = {**os.environ, **(env or {}), SCHEDULED_FOR_ENV: tick.isoformat()}
        # Own session: a Ctrl-C in the scheduler's terminal reaches the scheduler only, which
        # then decides whether the child is waited for or interrupted.
        return LocalRun(subprocess.Popen(command, env=child_env, start_new_session=True))

    return launch


class RemoteRun:
    """A job submitted to a Ray cluster, polled through the Jobs API."""

    def __init__(self, client: Any, submission_id: str) -> None:
        self.client = client
        self.submission_id = submission_id

    def poll(self) -> int | None:
        from ray.job_submission import JobStatus

        try:
            status = self.client.get_job_status(self.submission_id)
        except Exception as exc:  # the cluster went away: count the run as ended, badly
            log.warning("cannot get the status of %s (%s); counting it as ended",
                        self.submission_id, exc)
            return EXIT_FAILED
        if not status.is_terminal():
            return None
        return EXIT_OK if status == JobStatus.SUCCEEDED else EXIT_FAILED

    def interrupt(self, grace_s: float = KILL_GRACE_S) -> None:
        self.client.stop_job(self.submission_id)


def remote_launcher(spec_path: str, address: str) -> Callable[[dt.datetime], RemoteRun]:
    """Submit `spec_path` to the cluster per tick, at most once per tick (deterministic id)."""
    from ironsight.jobs import submit
    from ironsight.jobs.rayjobs import job_client
    from ironsight.jobs.spec_file import load_spec

    client = job_client(address)

    def launch(tick: dt.datetime) -> RemoteRun:
        spec = load_spec(spec_path)
        sid = submit.scheduled_submission_id(spec.name, submit.validated_spec_hash(spec), tick)
        result = submit.submit_spec(spec_path, submission_id=sid, client=client)
        log.info("tick %s: %s %s", tick.isoformat(), "submitted" if result.submitted
                 else f"already submitted ({result.status})", sid)
        return RemoteRun(client, sid)

    return launch


@dataclass
class _Clock:
    now: Callable[[], dt.datetime]
    sleep: Callable[[float], None]


class Scheduler:
    """Fires `launch(tick)` on each tick of `schedule`; see the module doc for the rules.

    Args:
        job: job name (keys the state and the lock).
        schedule: when to fire.
        state: where the last handled tick is kept.
        launch: starts one run for a tick and returns its handle.
        on_overlap: 'skip' or 'queue' a tick that comes while a run is going.
        now: the clock (aware UTC datetimes); injectable for tests.
        sleep: waits that many seconds; injectable for tests. The default wakes on `stop()`.
        poll_s: how often a running child is checked.
        kill_on_exit: interrupt the running child on `stop()` instead of waiting for it.
        max_sleep_s: longest sleep between checks, so a clock jump is noticed.
    """

    def __init__(
        self,
        *,
        job: str,
        schedule: CronSchedule,
        state: TickState,
        launch: Callable[[dt.datetime], RunHandle],
        on_overlap: str = "skip",
        now: Callable[[], dt.datetime] | None = None,
        sleep: Callable[[float], None] | None = None,
        poll_s: float = 1.0,
        kill_on_exit: bool = False,
        max_sleep_s: float = MAX_SLEEP_S,
    ) -> None:
        if on_overlap not in OVERLAP_POLICIES:
            raise InvalidInput(f"--on-overlap {on_overlap!r}; expected one of {OVERLAP_POLICIES}")
        self.job = job
        self.schedule = schedule
        self.state = state
        self.launch = launch
        self.on_overlap = on_overlap
        self._stop = threading.Event()
        self.clock = _Clock(now or (lambda: dt.datetime.now(UTC)), sleep or self._stop.wait)
        self.poll_s = poll_s
        self.kill_on_exit = kill_on_exit
        self.max_sleep_s = max_sleep_s
        self.child: RunHandle | None = None
        self.child_tick: dt.datetime | None = None
        self.pending: dt.datetime | None = None
        self.handled: dt.datetime | None = None  # ticks <= this are fired, skipped or queued
        self.fired: list[dt.datetime] = []
        self.skipped: list[dt.datetime] = []

    def open(self) -> None:
        """Lock the job's state and load its last handled tick (now, on a first start)."""
        self.state.lock()
        self.handled = self.state.load()
        if self.handled is None:
            self.handled = self.clock.now()
            self.state.save(self.handled)
            log.info("job %r: first start; the first tick is %s", self.job,
                     self.schedule.next_after(self.handled).isoformat())

    def close(self) -> None:
        self.state.unlock()

    def stop(self) -> None:
        """Stop firing (safe from a signal handler); `run` then finishes the running child."""
        self._stop.set()

    def _fire(self, tick: dt.datetime) -> None:
        self.state.save(tick)  # before starting: a crash here loses the tick, never doubles it
        log.info("job %r: tick %s: starting", self.job, tick.isoformat())
        self.fired.append(tick)
        try:
            self.child, self.child_tick = self.launch(tick), tick
        except Exception as exc:  # a run that cannot start must not end the schedule
            log.error("job %r: tick %s: could not start the run: %s", self.job,
                      tick.isoformat(), exc)
            self.child = self.child_tick = None

    def step(self) -> float:
        """Reap, fire what is due; returns the seconds until something may need doing."""
        now = self.clock.now()
        if self.child is not None:
            rc = self.child.poll()
            if rc is not None:
                log.info("job %r: tick %s: run exited %s", self.job, self.child_tick.isoformat(), rc)
                self.child = self.child_tick = None
        if self.child is None and self.pending is not None:
            tick, self.pending = self.pending, None
            self._fire(tick)
        latest = self.schedule.latest_at_or_before(now)
        if latest > self.handled:
            older = self.schedule.next_after(self.handled)
            if older < latest:
                log.warning("job %r: ticks from %s to %s were missed; running only the latest, %s",
                            self.job, older.isoformat(), latest.isoformat(), latest.isoformat())
            self.handled = latest
            if self.child is None:
                self._fire(latest)
            elif self.on_overlap == "skip":
                log.warning("job %r: tick %s skipped: the run for %s is still going", self.job,
                            latest.isoformat(), self.child_tick.isoformat())
                self.state.save(latest)
                self.skipped.append(latest)
            else:
                if self.pending is not None:
                    log.warning("job %r: queued tick %s replaced by %s", self.job,
                                self.pending.isoformat(), latest.isoformat())
                    self.skipped.append(self.pending)
                self.pending = latest
        until_next = (self.schedule.next_after(self.handled) - now).total_seconds()
        wait = min(max(until_next, 0.0), self.max_sleep_s)
        return min(wait, self.poll_s) if self.child is not None else wait

    def run(self) -> int:
        """Fire until `stop()`, then wait for (or interrupt) the running child; returns 0."""
        self.open()
        try:
            while not self._stop.is_set():
                delay = self.step()
                if not self._stop.is_set():
                    self.clock.sleep(delay)
            if self.child is not None and self.child.poll() is None:
                if self.kill_on_exit:
                    log.info("job %r: interrupting the run for %s", self.job,
                             self.child_tick.isoformat())
                    self.child.interrupt(KILL_GRACE_S)
                else:
                    log.info("job %r: waiting for the run for %s to finish", self.job,
                             self.child_tick.isoformat())
                    while self.child.poll() is None:
                        time.sleep(min(self.poll_s, 1.0))
            return 0
        finally:
            self.close()


# --------------------------------------------------------------------------- CLI


def _default_state_dir() -> Path:
    home = os.environ.get("IRONSIGHT_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share", "ironsight"
    )
    return Path(home) / "schedules"


def _schedule_command(args: Any) -> int:
    from ironsight.jobs.spec_file import load_spec

    spec = load_spec(args.spec)  # a bad spec fails now, not at 2 am
    check_job_name(spec.name)
    schedule = CronSchedule(args.cron, args.timezone)
    if args.address:
        launch = remote_launcher(os.path.abspath(args.spec), args.address)
    else:
        env = {}
        if args.history_db:
            env["IRONSIGHT_HISTORY_URL"] = history_url(args.history_db)
        command = [sys.executable, "-m", "ironsight.jobs.cli", "run", os.path.abspath(args.spec),
                   "--no-progress"]
        launch = local_launcher(command, env)
    scheduler = Scheduler(
        job=spec.name,
        schedule=schedule,
        state=TickState(args.state_dir or _default_state_dir(), spec.name),
        launch=launch,
        on_overlap=args.on_overlap,
        kill_on_exit=args.kill_on_exit,
    )

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("job %r: %s received: no more ticks", spec.name, signal.Signals(signum).name)
        scheduler.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"scheduling {spec.kind} job {spec.name!r}: {args.cron} ({args.timezone}), "
          f"on overlap: {args.on_overlap}; state in {scheduler.state.path}", flush=True)
    return scheduler.run()


def add_commands(subparsers: Any, formatter: Any) -> None:
    """Add `ironsight schedule`."""
    p = subparsers.add_parser(
        "schedule",
        help="run a job spec on a cron schedule from this machine (nightly audits)",
        description="Run SPEC.yaml on a cron schedule until SIGTERM/SIGINT. Each tick runs "
        "`ironsight run SPEC` as a child process (or submits it to --address); runs are "
        "recorded in `ironsight history`. A tick never fires twice, also across restarts; "
        "ticks missed while stopped collapse into one run at start.",
        epilog="examples:\n"
        "  ironsight schedule nightly-audit.yaml --cron '0 2 * * *' --timezone Europe/Berlin\n"
        "  ironsight schedule labels.yaml --cron '*/30 * * * *' --on-overlap queue\n"
        "  ironsight schedule audit.yaml --cron '0 3 * * 1-5' --address http://head:8265\n\n"
        "exit codes: 0 after a clean shutdown, 2 bad spec, cron, time zone or state.\n"
        "A run's own exit codes (3 gate failed, 4 regressed) are in its history entry.",
        formatter_class=formatter,
    )
    p.add_argument("spec", metavar="SPEC.yaml", help="job spec to run on each tick")
    p.add_argument("--cron", required=True, metavar="EXPR",
                   help="'M H DOM MON DOW', or 6 fields with seconds last ('* * * * * */10')")
    p.add_argument("--timezone", default="UTC", metavar="TZ",
                   help="IANA time zone of --cron (default: UTC)")
    p.add_argument("--on-overlap", choices=OVERLAP_POLICIES, default="skip",
                   help="a tick while the previous run is going: skip it, or queue it (default: skip)")
    p.add_argument("--state-dir", metavar="DIR", default=None,
                   help="where the last handled tick per job is kept (default: "
                   "$IRONSIGHT_HOME/schedules)")
    p.add_argument("--history-db", metavar="URL_OR_PATH", default=None,
                   help="run history the runs record into (default: $IRONSIGHT_HISTORY_URL or "
                   "$IRONSIGHT_HOME/history.db)")
    p.add_argument("--address", metavar="URL", default=None,
                   help="submit each run to this Ray cluster's Jobs API instead of running it here")
    p.add_argument("--kill-on-exit", action="store_true",
                   help="on SIGTERM/SIGINT interrupt the running run instead of waiting for it")
    p.set_defaults(handler=_schedule_command)
