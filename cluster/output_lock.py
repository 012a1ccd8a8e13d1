"""The OUTPUT lock: one run at a time per OUTPUT, through ``OUTPUT/_lock.json`` (owner, host,
pid, process identity, heartbeat), which a crashed run cannot wedge (:class:`OutputLock`).

Whether the process named in a lock still runs is asked of :mod:`ironsight.cluster.liveness`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ironsight.cluster import storage
from ironsight.cluster.errors import InvalidInput, JobFailed
from ironsight.cluster.liveness import process_exists, process_identity

LOCK = "_lock.json"
# A lock whose heartbeat is older than this belongs to a dead run and may be taken over:
# long enough to survive a stalled driver or a slow object store, short enough that a crashed
# run blocks its successor for at most two minutes.
LOCK_STALE_AFTER_S = 120.0
LOCK_HEARTBEAT_S = 15.0


# Owners of the locks that live OutputLock objects of this process hold (acquired, not yet
# released). A lock file naming this host and this pid but an owner missing here was left by
# an earlier run in this process whose release() could not delete it (storage was down).
_LIVE_OWNERS: set[str] = set()
_LIVE_OWNERS_GUARD = threading.Lock()


@dataclass
class OutputLock:
    """One run at a time per OUTPUT: a lock file with a heartbeat that a crash cannot wedge.

    A lock is taken over when its heartbeat is older than :data:`LOCK_STALE_AFTER_S`, when
    its owner ran on this host and that process no longer exists, or when its owner is this
    very process but no live :class:`OutputLock` here holds it (an earlier run in this process
    released it while the storage was unreachable, so the file stayed behind). The lock names
    its process by pid and identity (``process_start``, :mod:`ironsight.cluster.liveness`): a
    pid now given to another process, or a lock from before a reboot, counts as gone; a lock
    from another pid namespace on the same host name (a container) cannot be checked from here
    and waits for its heartbeat to expire. Locally the file is created with ``O_EXCL`` so two
    racing runs cannot both win; on S3 (no conditional PUT through pyarrow) the lock is written
    and read back, which narrows but does not close the race.
    """

    loc: storage.Location
    owner: str
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, out: storage.Location) -> OutputLock:
        loc = out.join(LOCK)
        owner = uuid.uuid4().hex
        body = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                "process_start": process_identity(os.getpid())}
        current = _read_lock(loc)
        if current is not None and not _lock_is_stale(current):
            age = time.time() - float(current.get("heartbeat", 0))
            raise InvalidInput(
                f"{out.uri} is in use by another run (pid {current.get('pid')} on "
                f"{current.get('host')}, heartbeat {age:.0f}s ago). Wait for it to finish, or "
                f"choose another OUTPUT; a crashed run's lock expires after {LOCK_STALE_AFTER_S:.0f}s."
            )
        if current is not None:
            storage.delete(loc)
        if not _create_exclusive(loc, {**body, "heartbeat": time.time()}):
            raise InvalidInput(f"{out.uri} was locked by another run a moment ago; try again later")
        if (_read_lock(loc) or {}).get("owner") != owner:
            raise InvalidInput(f"{out.uri} was locked by another run a moment ago; try again later")
        lock = cls(loc=loc, owner=owner)
        with _LIVE_OWNERS_GUARD:
            _LIVE_OWNERS.add(owner)
        lock._thread = threading.Thread(target=lock._beat, args=(body,), daemon=True)
        lock._thread.start()
        return lock

    def _beat(self, body: dict) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            try:
                storage.publish_bytes(self.loc, json.dumps({**body, "heartbeat": time.time()}).encode())
            except Exception:  # noqa: BLE001 - a missed heartbeat only shortens the lock's life
                pass

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file if it is still ours.

        After this the lock is no longer live in this process even when the delete failed, so a
        later run here takes the leftover file over at once instead of waiting for it to expire.
        """
        self._stop.set()
        try:
            if self._thread is not None:
                self._thread.join(timeout=5)
            if (_read_lock(self.loc) or {}).get("owner") == self.owner:
                storage.delete(self.loc)
        finally:
            with _LIVE_OWNERS_GUARD:
                _LIVE_OWNERS.discard(self.owner)


def _read_lock(loc: storage.Location) -> dict | None:
    try:
        return json.loads(storage.read_bytes(loc))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    except (OSError, JobFailed):  # unreachable storage: no lock we can see
        return None


def _lock_is_stale(lock: dict) -> bool:
    if time.time() - float(lock.get("heartbeat", 0)) > LOCK_STALE_AFTER_S:
        return True
    if lock.get("host") == socket.gethostname():
        if _same_pid(lock.get("pid")):
            with _LIVE_OWNERS_GUARD:
                return lock.get("owner") not in _LIVE_OWNERS
        try:
            pid = int(lock.get("pid", -1))
        except (TypeError, ValueError):
            return False
        return process_exists(pid, lock.get("process_start")) is False
    return False


def _same_pid(pid: Any) -> bool:
    try:
        return int(pid) == os.getpid()
    except (TypeError, ValueError):
        return False


def _create_exclusive(loc: storage.Location, body: dict) -> bool:
    data = json.dumps(body).encode()
    if loc.is_s3:
        storage.publish_bytes(loc, data)
        return True
    try:
        fd = os.open(loc.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True
