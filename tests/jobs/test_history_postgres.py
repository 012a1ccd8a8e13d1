"""Run history on a real PostgreSQL server (`postgres_url` in tests/jobs/conftest.py): the store
tests of test_history.py again, the schema created and upgraded by processes at once, runs
finishing at once (SQLite and PostgreSQL), and connection errors that name the URL with its
password masked.

The reused tests are the functions of test_history.py listed in `REUSED`, run here with `db`
a PostgreSQL URL (test_history.py itself runs them on SQLite). Its `_set` helper writes with
sqlite3; here it is replaced by one that writes through SQLAlchemy to either database.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.history import HistoryStore, RunRecorder, history_url
from ironsight.jobs.history.schema import SCHEMA_VERSION
from ironsight.jobs.spec import ClassifyJob

IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]

_spec = importlib.util.spec_from_file_location(
    "_history_tests_on_postgres", Path(__file__).with_name("test_history.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)

# The tests of test_history.py written against the store API and the CLI (not sqlite3 files).
REUSED = (
    "test_runs_survive_reopening_and_keep_utc_times",
    "test_runs_filter_by_job_and_last",
    "test_previous_success_skips_failed_and_regressed_runs_and_other_jobs",
    "test_recorder_records_a_failure_without_credentials",
    "test_recorder_records_gate_failure_with_the_written_report",
    "test_recorder_uses_the_gate_threshold",
    "test_history_command_table_and_json",
    "test_a_sigkilled_run_is_shown_abandoned_and_later_runs_are_unaffected",
    "test_a_reused_pid_is_not_mistaken_for_the_run",
    "test_a_run_from_before_a_reboot_is_abandoned",
    "test_runs_this_host_cannot_check_stay_running",
)
_missing = [name for name in REUSED if not hasattr(_base, name)]
assert not _missing, f"test_history.py no longer has {_missing}: update REUSED"
globals().update({name: getattr(_base, name) for name in REUSED})


def _set(db: str, run_id: int, **values) -> None:
    """test_history's `_set` for any database URL."""
    engine = sa.create_engine(history_url(db))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "update ironsight_runs set " + ", ".join(f"{k} = :{k}" for k in values)
                + " where id = :run_id"), {**values, "run_id": run_id})
    finally:
        engine.dispose()


_base._set = _set


@pytest.fixture
def db(postgres_url) -> str:
    return postgres_url


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request, tmp_path) -> str:
    """A new history database of each kind, as a URL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/history.db"
    return request.getfixturevalue("postgres_url")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*IRONSIGHT, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


# ---- schema ------------------------------------------------------------------------------

def test_schema_is_created_and_a_newer_one_refused(db) -> None:
    store = HistoryStore(db.replace("postgresql+psycopg://", "postgres://"))  # the short form
    assert store.engine.dialect.driver == "psycopg"
    assert store.schema_version == SCHEMA_VERSION
    assert {"ironsight_meta", "ironsight_runs"} <= set(sa.inspect(store.engine).get_table_names())
    with store.engine.begin() as conn:
        conn.execute(sa.text("update ironsight_meta set value='99' where key='schema_version'"))
    with pytest.raises(InvalidInput, match="schema version 99.*upgrade Ironsight"):
        HistoryStore(db)


def _open_history(url: str, barrier) -> None:
    barrier.wait()
    HistoryStore(url)


def _open_at_once(url: str, n: int = 4) -> list[int | None]:
    ctx = mp.get_context("fork")  # spawn cannot import this module (importlib mode)
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_open_history, args=(url, barrier)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    return [p.exitcode for p in procs]


@pytest.mark.parametrize("round_", range(3))
def test_processes_creating_the_schema_at_once_all_succeed(db, round_) -> None:
    """Concurrent CREATE TABLE in PostgreSQL fails on pg_type's unique index unless serialized."""
    assert _open_at_once(db) == [0, 0, 0, 0]
    assert HistoryStore(db).schema_version == SCHEMA_VERSION


# The schema 1 tables as Ironsight 0.1 created them in PostgreSQL.
SCHEMA_1 = [
    "CREATE TABLE ironsight_meta (key VARCHAR(64) NOT NULL PRIMARY KEY, value VARCHAR(256) NOT NULL)",
    "CREATE TABLE ironsight_runs (id SERIAL PRIMARY KEY, job VARCHAR(256) NOT NULL, "
    "kind VARCHAR(32) NOT NULL, spec_hash VARCHAR(64), model VARCHAR(256), weights_hash VARCHAR(64), "
    "scheduled_for TIMESTAMP WITH TIME ZONE, started_at TIMESTAMP WITH TIME ZONE NOT NULL, "
    "ended_at TIMESTAMP WITH TIME ZONE, status VARCHAR(16) NOT NULL, output TEXT, metrics JSON, "
    "error TEXT, host VARCHAR(256))",
    "CREATE INDEX ix_ironsight_runs_job ON ironsight_runs (job)",
    "INSERT INTO ironsight_meta VALUES ('schema_version', '1')",
    "INSERT INTO ironsight_runs (job, kind, started_at, status, metrics, host) VALUES "
    "('old', 'audit', '2026-01-02 03:04:05+00', 'succeeded', '{\"clean_accuracy\": 0.5}', 'h')",
]


@pytest.mark.parametrize("round_", range(2))
def test_processes_upgrading_a_schema_1_database_at_once_all_succeed(db, round_) -> None:
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        for statement in SCHEMA_1:
            conn.execute(sa.text(statement))
    engine.dispose()
    assert _open_at_once(db) == [0, 0, 0, 0]
    store = HistoryStore(db)
    assert store.schema_version == SCHEMA_VERSION
    (old,) = store.runs()
    assert (old.job, old.status, old.metrics, old.pid) == ("old", "succeeded", {"clean_accuracy": 0.5}, None)
    new = store.start(job="new", kind="classify")
    assert [r.id for r in store.runs()] == [old.id, new] and new > old.id


# ---- runs finishing at once --------------------------------------------------------------

def _record_run(url: str, index: int, barrier, results) -> None:
    store = HistoryStore(url)
    barrier.wait()
    run_id = store.start(job="nightly", kind="audit", model=f"m{index}")
    barrier.wait()  # every run started: now all finish at the same moment
    store.finish(run_id, "succeeded", {"clean_accuracy": index / 10, "per_condition": {"fog": index / 20}})
    store.mark_abandoned()  # what the next run's start does, racing the others' ends
    results.put((index, run_id))


@pytest.mark.parametrize("workers", ["processes", "threads"])
def test_runs_finishing_at_once_are_each_recorded_once(any_db, workers) -> None:
    """Four runs start and finish at the same moment: four ids, each run's own end, no loss."""
    n = 4
    if workers == "processes":
        ctx = mp.get_context("fork")
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_record_run, args=(any_db, i, barrier, results)) for i in range(n)]
    else:
        import queue

        barrier, results = threading.Barrier(n), queue.Queue()
        procs = [threading.Thread(target=_record_run, args=(any_db, i, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    recorded = dict(results.get(timeout=60) for _ in range(n))
    for p in procs:
        p.join(timeout=60)
    if workers == "processes":
        assert [p.exitcode for p in procs] == [0] * n
    assert len(set(recorded.values())) == n  # no duplicate id
    runs = {r.id: r for r in HistoryStore(any_db).runs()}
    assert sorted(runs) == sorted(recorded.values())  # all visible, nothing else
    for index, run_id in recorded.items():
        run = runs[run_id]
        assert (run.status, run.model) == ("succeeded", f"m{index}")
        assert run.metrics == {"clean_accuracy": index / 10, "per_condition": {"fog": index / 20}}


# ---- connection errors -------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


@pytest.mark.parametrize("via", ["flag", "env"])
def test_an_unreachable_server_is_named_with_the_password_masked(via) -> None:
    port = _closed_port()
    secret = "Zq9-unreachable-pw"
    url = f"postgresql+psycopg://ci:{secret}@127.0.0.1:{port}/ironsight"
    args, env = (["--history-db", url], {}) if via == "flag" else ([], {"IRONSIGHT_HISTORY_URL": url})
    proc = _cli("history", *args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert f"postgresql+psycopg://ci:***@127.0.0.1:{port}/ironsight" in proc.stderr
    assert "Connection refused" in proc.stderr
    assert "check the host, port, database, user and password" in proc.stderr
    assert secret not in proc.stdout + proc.stderr


def test_a_wrong_password_is_refused_without_showing_it(postgres_server, postgres_url) -> None:
    wrong = "Wrong-pw-7f3a"
    url = postgres_server.url(postgres_url.rsplit("/", 1)[1], password=wrong)
    proc = _cli("--log-format", "json", "history", "--history-db", url)
    assert proc.returncode == 2, proc.stderr
    (record,) = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert record["level"] == "ERROR"
    assert f"ironsight:***@127.0.0.1:{postgres_server.port}/" in record["message"]
    assert 'password authentication failed for user "ironsight"' in record["message"]
    assert wrong not in proc.stdout + proc.stderr
    assert postgres_server.password not in proc.stdout + proc.stderr


def test_a_job_runs_on_without_history_and_logs_no_secret(monkeypatch, capsys, caplog) -> None:
    port = _closed_port()
    secret = "Zq9-job-pw"
    monkeypatch.setenv("IRONSIGHT_HISTORY_URL", f"postgres://ci:{secret}@127.0.0.1:{port}/db")
    spec = ClassifyJob(input="i/", output="o/", model="demo_cnn", random_weights=True)
    with caplog.at_level(logging.DEBUG), RunRecorder(spec) as rec:
        ran = True
    assert ran and rec.run_id is None
    err = capsys.readouterr().err
    assert "run history disabled" in err
    assert f"postgresql+psycopg://ci:***@127.0.0.1:{port}/db" in err
    assert secret not in err + caplog.text


def test_a_missing_driver_says_what_to_install() -> None:
    with pytest.raises(InvalidInput) as info:
        HistoryStore("postgresql+pg8000://ci:Zq9-driver-pw@db.internal/ironsight")
    message = str(info.value)
    assert "postgresql+pg8000://ci:***@db.internal/ironsight" in message
    assert "pip install 'ironsight[postgres]'" in message and "Zq9-driver-pw" not in message
