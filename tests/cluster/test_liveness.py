"""cluster/liveness.py: whether the process that wrote a record still runs, told apart from a
later process given the same pid, and the output lock's use of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ironsight.cluster import liveness

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
