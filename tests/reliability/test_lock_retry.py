"""A library caller retrying in the same process after an outage is not locked out by itself.

When storage is down, ``OutputLock.release`` cannot delete ``_lock.json``; the file names this
host and this (alive) pid, so before the fix a retry here was refused "in use by another run"
for 120 s. A lock left by this process but held by no live ``OutputLock`` here is stale.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

import pytest

from ironsight.cluster import storage
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.output_lock import LOCK, OutputLock
from tests.reliability.test_faults import FlakyProxy


def _leftover(out, *, pid: int | None = None) -> dict:
    """``_lock.json`` as a run of this process leaves it when its release() found storage down:
    a fresh heartbeat, this host, this pid, an owner no live lock holds."""
    body = {"owner": uuid.uuid4().hex, "host": socket.gethostname(),
            "pid": os.getpid() if pid is None else pid, "heartbeat": time.time()}
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK).write_text(json.dumps(body))
    return body


def test_a_lock_left_by_an_earlier_run_in_this_process_is_taken_over_at_once(tmp_path):
    out = tmp_path / "out"
    left = _leftover(out)
    lock = OutputLock.acquire(storage.resolve(str(out)))
    try:
        now = json.loads((out / LOCK).read_text())
        assert now["owner"] == lock.owner != left["owner"] and now["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (out / LOCK).exists()


def test_a_lock_held_by_a_live_lock_in_this_process_is_still_refused(tmp_path):
    out = storage.resolve(str(tmp_path / "out"))
    storage.makedirs(out)
    held = OutputLock.acquire(out)
    try:
        with pytest.raises(InvalidInput, match=f"in use by another run \\(pid {os.getpid()} "):
            OutputLock.acquire(out)
    finally:
        held.release()
    OutputLock.acquire(out).release()  # released: free again


def test_a_live_lock_of_another_process_on_this_host_is_still_refused(tmp_path):
    out = tmp_path / "out"
    _leftover(out, pid=os.getppid())  # alive, and not this process
    with pytest.raises(InvalidInput, match=f"pid {os.getppid()}"):
        OutputLock.acquire(storage.resolve(str(out)))


@pytest.fixture
def s3_behind_proxy(s3_server, s3_bucket, monkeypatch):
    """The moto endpoint behind a TCP proxy that can go down; one SDK attempt per request."""
    host, port = s3_server.removeprefix("http://").split(":")
    proxy = FlakyProxy((host, int(port)))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("IRONSIGHT_S3_MAX_ATTEMPTS", "1")
    yield proxy, s3_bucket
    proxy.close()


def test_a_retry_after_a_release_during_an_s3_outage_is_not_locked_out(s3_behind_proxy):
    proxy, bucket = s3_behind_proxy
    out = storage.resolve(f"{bucket}/out")
    first = OutputLock.acquire(out)
    proxy.down()
    try:
        first.release()  # cannot read or delete the lock: it stays on S3
    finally:
        proxy.up.set()
    left = json.loads(storage.read_bytes(out.join(LOCK)))
    assert left["owner"] == first.owner and left["pid"] == os.getpid()
    started = time.monotonic()
    second = OutputLock.acquire(out)  # the same process retries as soon as S3 is back
    try:
        assert time.monotonic() - started < 30
        assert json.loads(storage.read_bytes(out.join(LOCK)))["owner"] == second.owner
    finally:
        second.release()
    assert not storage.exists(out.join(LOCK))
