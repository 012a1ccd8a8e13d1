"""When a schedule fires and what it has handled: the cron expression in a time zone, and the
last handled tick of each job (`ironsight schedule`'s state, `ironsight.jobs.schedule`).

| name              | what it is                                                            |
|-------------------|-----------------------------------------------------------------------|
| `CronSchedule`    | a cron expression read in an IANA time zone; its ticks as UTC datetimes |
| `check_job_name`  | a job name that can name state files (at most `MAX_JOB_NAME` characters) |
| `TickState`       | `STATE_DIR/<job>.json`, the last handled tick, and the lock that keeps two schedulers off one job |

Rules (each one tested in tests/jobs/test_schedule.py and tests/reliability/test_schedule_inputs.py):

- **Cron**: 5 fields (`0 2 * * *`), or 6 with seconds last (`* * * * * */2`, croniter's
  form), evaluated in `--timezone` (IANA, default UTC) with `zoneinfo`. An expression that
  can never fire (`0 0 31 2 *`, February 31st) is refused when the schedule is created (exit
  2), not found out at the first tick.
- **Job name**: the spec's `name` names the state files, so it is at most `MAX_JOB_NAME`
  (100) characters (refused with exit 2 before anything is created); characters other than
  letters, digits and `_.-` become `-` in the file names.
- **DST**: a wall-clock time skipped by a spring-forward transition fires once, right after
  the jump (02:30 Europe/Berlin on the last Sunday of March fires at 03:00 CEST). A wall-clock
  time that occurs twice at fall-back fires once (its first occurrence) when the schedule
  names fixed hours; a schedule whose hour field has `*` fires through both passes of the
  repeated hour, as Vixie cron does.
- **State**: written atomically (`ironsight.cluster.storage.publish_bytes`); an unreadable
  state file or a lock held by another scheduler is refused with exit 2, naming the file.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from ironsight.cluster import storage
from ironsight.cluster.errors import InvalidInput

__all__ = ["MAX_JOB_NAME", "UTC", "CronSchedule", "TickState", "check_job_name"]

UTC = dt.timezone.utc
# A scheduled job's name names its state files (`<name>.json`, `.<name>.json.tmp-<8 hex>`, `.lock`): file
# names are at most 255 bytes (NAME_MAX), so a ~250-character name failed with ENAMETOOLONG.
MAX_JOB_NAME = 100
# Ticks passed over looking for one that is not a repeated wall-clock time (at most one in a
# row can be: see CronSchedule._skip); the bound only keeps a bug from spinning forever.
MAX_SKIPPED_TICKS = 1000


class CronSchedule:
    """A cron expression in a time zone; ticks are returned as UTC datetimes.

    Args:
        expr: 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds last).
        timezone: IANA time zone the expression is read in.

    Raises:
        InvalidInput: not a cron expression, an unknown time zone, or an expression that never
            fires (``0 0 31 2 *``).

    >>> s = CronSchedule("30 2 * * *", "Europe/Berlin")
    >>> s.next_after(dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC)).isoformat()  # DST starts
    '2026-03-29T01:00:00+00:00'
    """

    def __init__(self, expr: str, timezone: str = "UTC") -> None:
        fields = expr.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(expr):
            raise InvalidInput(
                f"--cron {expr!r} is not a cron expression; expected 5 fields like '0 2 * * *' "
                "(minute hour day-of-month month day-of-week), or 6 with seconds last "
                "('* * * * * */10')"
            )
        try:
            self.tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(
                f"--timezone {timezone!r} is not an IANA time zone; use e.g. 'UTC' or "
                "'Europe/Berlin'"
            ) from None
        self.expr = expr
        self.timezone = timezone
        # A schedule with fixed hours fires a repeated wall-clock time once (see module doc).
        self._fixed_hours = "*" not in fields[1]
        # Cron repeats within 400 years (the Gregorian calendar's full cycle, weekdays
        # included), so a first tick after any one instant exists iff the expression fires at
        # all; croniter gives up (CroniterBadDateError) on a date that does not exist.
        self.next_after(dt.datetime(2000, 1, 1, tzinfo=UTC))

    def _never_fires(self) -> InvalidInput:
        return InvalidInput(
            f"--cron {self.expr!r}: the cron expression never fires: no date matches it (like "
            "February 31st or April 31st); use a date that exists, or L for the last day of "
            "the month ('0 0 L * *')"
        )

    def _walk(self, it: croniter, forward: bool) -> dt.datetime:
        """The first tick of `it` in that direction that is not skipped, as UTC."""
        for _ in range(MAX_SKIPPED_TICKS):
            try:
                tick = it.get_next(dt.datetime) if forward else it.get_prev(dt.datetime)
            except CroniterBadDateError:
                raise self._never_fires() from None
            if not self._skip(tick):
                return tick.astimezone(UTC)
        raise self._never_fires()

    def _skip(self, tick: dt.datetime) -> bool:
        """The second occurrence of an ambiguous wall-clock time, for fixed-hour schedules."""
        if not self._fixed_hours or not tick.fold:
            return False
        return tick.replace(fold=0).utcoffset() != tick.utcoffset()

    def next_after(self, when: dt.datetime) -> dt.datetime:
        """The first tick strictly after `when` (aware)."""
        return self._walk(croniter(self.expr, when.astimezone(self.tz)), forward=True)

    def latest_at_or_before(self, when: dt.datetime) -> dt.datetime:
        """The last tick at or before `when` (aware)."""
        start = (when + dt.timedelta(microseconds=1)).astimezone(self.tz)
        return self._walk(croniter(self.expr, start), forward=False)


def check_job_name(job: str) -> str:
    """`job` when it can name a schedule's state files; InvalidInput (exit 2) otherwise.

    >>> check_job_name("nightly-audit")
    'nightly-audit'
    """
    if len(job) > MAX_JOB_NAME:
        raise InvalidInput(
            f"job name {job[:40]!r}... is {len(job)} characters long; a scheduled job's name "
            f"(the spec's `name`) is at most {MAX_JOB_NAME} characters, because it names the "
            "schedule's state files"
        )
    _slug(job)
    return job


def _slug(job: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", job).strip("-.")
    if not slug:
        raise InvalidInput(f"job name {job!r} has no usable characters for a state file name")
    return slug


class TickState:
    """The last handled tick of one job, in `STATE_DIR/<job>.json`, plus a lock file.

    >>> import tempfile
    >>> state = TickState(tempfile.mkdtemp(), "nightly")
    >>> state.load() is None
    True
    >>> state.save(dt.datetime(2026, 11, 23, 2, 0, tzinfo=UTC))
    >>> TickState(state.path.parent, "nightly").load().isoformat()
    '2026-11-23T02:00:00+00:00'
    """

    def __init__(self, state_dir: str | os.PathLike, job: str) -> None:
        self.job = check_job_name(job)
        directory = Path(state_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"--state-dir {directory}: cannot create it ({exc})") from exc
        self.path = directory / f"{_slug(job)}.json"
        self._lock_file: Any = None

    def load(self) -> dt.datetime | None:
        if not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return dt.datetime.fromisoformat(data["last_tick"]).astimezone(UTC)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(
                f"schedule state {self.path} is unreadable ({exc}); delete it to start the "
                "schedule afresh (ticks before now will not run)"
            ) from exc

    def save(self, tick: dt.datetime) -> None:
        """Atomically record `tick` as handled (`ironsight.cluster.storage.publish_bytes`:
        write beside it, fsync, rename)."""
        data = {"job": self.job, "last_tick": tick.astimezone(UTC).isoformat(),
                "saved_at": dt.datetime.now(UTC).isoformat(timespec="seconds")}
        storage.publish_bytes(storage.resolve(str(self.path)), json.dumps(data).encode("utf-8"))

    def lock(self) -> None:
        """Hold an exclusive lock for this job until `unlock` (or process exit)."""
        path = self.path.with_suffix(".lock")
        try:
            f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the process's life
        except OSError as exc:
            raise InvalidInput(
                f"schedule state {path}: cannot open the lock file ({exc.strerror}); check "
                "--state-dir"
            ) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise InvalidInput(
                f"another scheduler (pid {holder}) already runs job {self.job!r} with state "
                f"{self.path}; stop it first, or use another --state-dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
