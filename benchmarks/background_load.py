"""A fixed background CPU load that a benchmark starts itself and stops: N busy-loop processes.

Each process spins (pure Python arithmetic, no I/O, no memory traffic) for ``duty`` of every
``period`` seconds and sleeps the rest, so N processes at duty D add about N x D runnable
threads to the 1-minute load average whatever else the machine does. It stands in for the
neighbours on a shared node: the matrix's "busy" column is measured with ``BackgroundLoad(2,
0.5)`` (2 processes at 50%: one core's worth of work spread over both cores of the 2-core
development machine, load average about +1).

    with BackgroundLoad(processes=2, duty=0.5):
        run_the_benchmark()

The processes are fresh interpreters (``python -c``: no copy of the parent's torch or Ray
state), stopped by their own pid (terminate, then kill after 5 s) on exit, also when the
benchmark raises.
"""

from __future__ import annotations

import subprocess
import sys

# One busy loop: spin for DUTY of every PERIOD seconds, sleep the rest, until killed.
SPIN = """
import time
busy, idle = {busy!r}, {idle!r}
x = 0
while True:
    end = time.perf_counter() + busy
    while time.perf_counter() < end:
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    if idle > 0:
        time.sleep(idle)
"""


class BackgroundLoad:
    """``processes`` busy loops at ``duty`` (0 < duty <= 1) of every ``period`` seconds.

    >>> with BackgroundLoad(processes=1, duty=0.2, period=0.05) as load:
    ...     len(load.pids)
    1
    >>> load.pids
    []
    """

    def __init__(self, processes: int, duty: float, period: float = 0.1) -> None:
        if processes < 0 or not 0.0 < duty <= 1.0:
            raise ValueError(f"processes >= 0 and 0 < duty <= 1, got {processes}, {duty}")
        self.processes, self.duty, self.period = processes, duty, period
        self._procs: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def describe(self) -> str:
        if not self.processes:
            return "idle (no background load)"
        return (f"{self.processes} busy-loop process(es) at {self.duty:.0%} duty "
                f"({self.period * 1e3:.0f} ms period)")

    def __enter__(self) -> BackgroundLoad:
        code = SPIN.format(busy=self.duty * self.period, idle=(1.0 - self.duty) * self.period)
        for _ in range(self.processes):
            self._procs.append(subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc) -> None:
        for p in self._procs:  # each by its own pid
            p.terminate()
        for p in self._procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs = []
