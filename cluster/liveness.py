"""Process liveness: whether the process that wrote a record (a run in the run history, an
output lock) still runs, told apart from a later process given the same pid.

| function             | answers                                                          |
|----------------------|------------------------------------------------------------------|
| ``process_identity`` | ``PIDNS/BOOT_ID/START_TICKS`` of a process (Linux ``/proc``), recorded beside its pid |
| ``process_exists``   | True: it runs. False: it exited (or is a zombie), its pid is now another process, or the machine rebooted since. None: cannot tell from here (another pid namespace) |

Without a recorded identity only ``os.kill(pid, 0)`` is asked: whether some process has the pid.
"""

from __future__ import annotations

import os

__all__ = ["process_exists", "process_identity"]


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a Linux process, None if it is gone."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0], fields[19]  # stat fields 3 (state) and 22 (starttime)


def process_identity(pid: int) -> str | None:
    """What tells process `pid` apart from a later process given the same pid (Linux only):
    `PIDNS/BOOT_ID/START_TICKS`; None where /proc does not say.

    >>> process_identity(os.getpid()) == process_identity(os.getpid())
    True
    """
    stat = _proc_stat(pid)
    namespace = _read_link("/proc/self/ns/pid")
    boot = _read("/proc/sys/kernel/random/boot_id")
    if stat is None or namespace is None or boot is None:
        return None
    return f"{namespace}/{boot}/{stat[1]}"


def _read_link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def process_exists(pid: int, identity: str | None) -> bool | None:
    """Whether the process that recorded `identity` as `pid` still runs on this host.

    True: it does. False: it exited (or is a zombie), or `pid` is now another process, or
    the machine rebooted since. None: cannot tell from here (another pid namespace).

    >>> process_exists(os.getpid(), process_identity(os.getpid()))
    True
    """
    if identity:
        namespace, _, rest = identity.partition("/")
        boot, _, start = rest.partition("/")
        if namespace != _read_link("/proc/self/ns/pid"):
            return None
        if boot != _read("/proc/sys/kernel/random/boot_id"):
            return False  # rebooted since: every process of that boot is gone
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X") and stat[1] == start
    try:  # no /proc identity was recorded: only whether some process has this pid
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return True
