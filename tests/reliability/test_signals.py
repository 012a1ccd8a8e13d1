"""SIGTERM to a running job: handled like Ctrl-C, then the same command resumes exactly once.

Before, ``kill PID`` (or ``docker stop``) ended ``ironsight classify`` through Ray's handlers:
``sys.exit(15)`` or a SIGABRT, with a ``*** SIGTERM received`` C++ stack and no word from us.
Now it exits 143 (128 + 15) with one line, after Ray is shut down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pyarrow.dataset as pads
import pytest

from ironsight.cluster import errors, synthetic
from ironsight.cluster.sink import SUCCESS
from ironsight.jobs import cli, run_spec
from tests.reliability.conftest import IRONSIGHT, REPO, part_files

MESSAGE = ("ironsight: interrupted by SIGTERM; committed shards are kept, rerun the same command "
           "to resume")


def test_sigterm_unwinds_like_ctrl_c_and_exits_143(monkeypatch, capfd):
    """In-process: the handler raises once, cleanup runs, main maps it to 143 and one line."""
    before = signal.getsignal(signal.SIGTERM)
    cleaned: list[bool] = []

    def dispatch(_args) -> int:
        with run_spec.sigterm_interrupts():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # interrupted at once
                raise AssertionError("SIGTERM did not interrupt the job")
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # a second one while unwinding is ignored
                time.sleep(0.05)
                cleaned.append(True)

    monkeypatch.setattr(cli, "_dispatch", dispatch)
    started = time.monotonic()
    assert cli.main(["models", "list"]) == errors.EXIT_SIGTERM == 143
    assert time.monotonic() - started < 4 and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before  # restored after the job
    assert capfd.readouterr().err.count(MESSAGE) == 1


@pytest.fixture(scope="module")
def term_corpus(tmp_path_factory) -> tuple[str, int]:
    """Enough rows that the job still runs for seconds after its first commit."""
    path = tmp_path_factory.mktemp("term-corpus")
    n = 1200
    synthetic.write_corpus(str(path), n, seed=11, rows_per_file=400, row_group_size=50, size=32)
    return str(path), n


def _gone(pgid: int, timeout: float) -> bool:
    """Whether every process of the job's process group has exited within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.cluster
def test_sigterm_mid_job_exits_143_with_one_line_then_a_rerun_completes_exactly_once(term_corpus, tmp_path):
    corpus, n = term_corpus
    out = tmp_path / "out"
    args = [*IRONSIGHT, "classify", corpus, str(out), "--model", "demo_cnn", "--random-weights",
            "--max-rows-per-shard", "50", "--batch-size", "32", "--actors", "1", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while not part_files(out):
            assert time.monotonic() < deadline, "no shard was committed in 180 s"
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # to the job's process alone, as `kill PID` does
        stdout, stderr = proc.communicate(timeout=120)
        assert _gone(proc.pid, 30), "processes of the job (Ray's) outlived it"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    assert proc.returncode == 143, stderr[-3000:]
    assert stderr.splitlines().count(MESSAGE) == 1, stderr[-3000:]
    assert "SIGABRT" not in stderr and "*** " not in stderr and "Traceback" not in stderr, stderr[-3000:]
    committed = len(part_files(out))
    assert 1 <= committed < n // 50 and not (out / SUCCESS).exists()  # it stopped mid-job

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{committed} already committed" in resumed.stdout
    ids = pads.dataset(str(out), format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    assert len(ids) == n == len(set(ids))  # every row exactly once
