"""cluster/liveness.py: whether the process that wrote a record still runs, told apart from a
later process given the same pid, and the output lock's use of it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ironsight.cluster import liveness, storage
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.output_lock import LOCK, OutputLock

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _identity(pid: int) -> tuple[str, str, str]:
    namespace, boot, start = liveness.process_identity(pid).split("/")
    return namespace, boot, start


def test_a_running_process_exists() -> None:
    assert liveness.process_exists(os.getpid(), liveness.process_identity(os.getpid())) is True
    assert liveness.process_exists(os.getpid(), None) is True  # no identity: the pid alone


def test_an_exited_process_does_not_exist() -> None:
    child = subprocess.Popen(SLEEPER)
    identity = liveness.process_identity(child.pid)
    child.kill()
    child.wait()  # reaped: the pid is free
    assert liveness.process_exists(child.pid, identity) is False
    assert liveness.process_exists(child.pid, None) is False


def test_a_zombie_does_not_exist() -> None:
    child = subprocess.Popen(SLEEPER)
    identity = liveness.process_identity(child.pid)
    try:
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while liveness.process_exists(child.pid, identity) and time.monotonic() < deadline:
            time.sleep(0.05)  # dead, not reaped yet: state Z
        assert liveness.process_exists(child.pid, identity) is False
    finally:
        child.wait()


def test_a_pid_given_to_another_process_is_not_the_one_recorded() -> None:
    namespace, boot, start = _identity(os.getpid())
    assert liveness.process_exists(os.getpid(), f"{namespace}/{boot}/{int(start) - 1}") is False


def test_a_process_from_before_a_reboot_is_gone() -> None:
    namespace, _, start = _identity(os.getpid())
    recorded = f"{namespace}/00000000-dead-beef-0000-000000000000/{start}"
    assert liveness.process_exists(os.getpid(), recorded) is False


def test_another_pid_namespace_cannot_be_told() -> None:
    _, boot, start = _identity(os.getpid())
    assert liveness.process_exists(os.getpid(), f"pid:[1]/{boot}/{start}") is None


# --- the output lock (cluster/output_lock.py) asks the same question ---------------------------


def _write_lock(out, **fields) -> None:
    body = {"owner": "another-run", "host": socket.gethostname(), "heartbeat": time.time(), **fields}
    (out / LOCK).write_text(json.dumps(body))


def test_the_output_lock_records_its_process_identity(tmp_path) -> None:
    lock = OutputLock.acquire(storage.resolve(str(tmp_path)))
    try:
        body = json.loads((tmp_path / LOCK).read_text())
        assert (body["pid"], body["process_start"]) == (os.getpid(), liveness.process_identity(os.getpid()))
    finally:
        lock.release()


def test_a_lock_whose_pid_now_runs_another_process_is_taken_over(tmp_path) -> None:
    """The recorded pid is alive, but it is not the process that took the lock (it started at
    another time): the run that held it is gone, so a new run does not wait two minutes."""
    child = subprocess.Popen(SLEEPER)
    try:
        namespace, boot, start = _identity(child.pid)
        _write_lock(tmp_path, pid=child.pid, process_start=f"{namespace}/{boot}/{int(start) - 1}")
        OutputLock.acquire(storage.resolve(str(tmp_path))).release()
        assert not (tmp_path / LOCK).exists()
    finally:
        child.kill()
        child.wait()


def test_a_lock_of_a_running_process_is_respected(tmp_path) -> None:
    child = subprocess.Popen(SLEEPER)
    try:
        _write_lock(tmp_path, pid=child.pid, process_start=liveness.process_identity(child.pid))
        with pytest.raises(InvalidInput, match=f"in use by another run \\(pid {child.pid} on"):
            OutputLock.acquire(storage.resolve(str(tmp_path)))
        _write_lock(tmp_path, pid=child.pid)  # an older Ironsight's lock, without identity
        with pytest.raises(InvalidInput, match="in use by another run"):
            OutputLock.acquire(storage.resolve(str(tmp_path)))
    finally:
        child.kill()
        child.wait()


def test_a_lock_from_another_pid_namespace_waits_for_its_heartbeat(tmp_path) -> None:
    """Same host name, other pid namespace (a container): its pid means nothing here."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    _, boot, start = _identity(os.getpid())
    _write_lock(tmp_path, pid=int(dead.stdout), process_start=f"pid:[1]/{boot}/{start}")
    with pytest.raises(InvalidInput, match="in use by another run"):
        OutputLock.acquire(storage.resolve(str(tmp_path)))
