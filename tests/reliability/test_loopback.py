"""The embedded Ray listens on loopback only (the README's promise).

Hole: ``ray.init(_node_ip_address="127.0.0.1")`` is not enough in Ray 2.60: ``ray.init``
replaces a loopback node IP with the host's IP on Linux, and then the GCS, the raylet and every
worker listen on all interfaces and the dashboard and runtime-env agents on the host's IP.

The test starts the embedded Ray exactly as the CLI does (``ironsight.cluster.raycluster.connect(None)``),
makes it start workers, an actor and a Ray Data pipeline (which starts Ray Data's own actors),
then reads the kernel's table of listening TCP sockets (``/proc/net/tcp``, ``/proc/net/tcp6``)
and maps each socket's inode to the process holding it through ``/proc/PID/fd``: every socket of
every process of that Ray session must be bound to a loopback address.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

from tests.conftest import parent_pids

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


def _listening_sockets() -> dict[int, tuple[str, int]]:
    """inode -> (local address, port) of every listening TCP socket in this network namespace."""
    found = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6 in this kernel
        for line in lines:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found[int(fields[9])] = (socket.inet_ntop(family, raw), int(hex_port, 16))
    return found


def _session_processes(session_dir: str) -> set[int]:
    """This driver, every process whose command line names the session dir (GCS, raylet,
    agents, monitors), and all their descendants (workers rename themselves ``ray::...``)."""
    roots = {os.getpid()}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if session_dir in cmd:
                roots.add(int(entry))
    parents = parent_pids()
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _sockets_of(pids: set[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, local address, port) of each listening socket the pids hold."""
    listening = _listening_sockets()
    held = []
    for pid in sorted(pids):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # exited meanwhile
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[len("socket:["):-1])
                if inode in listening:
                    held.append((pid, os.path.basename(name), *listening[inode]))
    return held


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1, a dual-stack socket bound to 127.0.0.1
    return ip.is_loopback


def test_the_loopback_check_sees_a_wildcard_socket():
    """The helpers find a socket this process holds and tell loopback from all interfaces."""
    with socket.socket() as wide, socket.socket() as narrow:
        wide.bind(("0.0.0.0", 0))
        wide.listen()
        narrow.bind(("127.0.0.1", 0))
        narrow.listen()
        held = {(addr, port) for _, _, addr, port in _sockets_of({os.getpid()})}
        assert ("0.0.0.0", wide.getsockname()[1]) in held
        assert ("127.0.0.1", narrow.getsockname()[1]) in held
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::") and not _is_loopback("10.1.2.3")
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("::ffff:127.0.0.1")


@pytest.mark.parametrize(("ray_address", "starts"), [("local", True), ("127.0.0.1:6379", False)])
def test_only_a_ray_started_here_is_pinned_to_loopback(monkeypatch, ray_address, starts):
    """With RAY_ADDRESS set (a Ray job's driver has it) ``ray.init()`` joins that cluster, whose
    node IP must stay routable; "local" makes it start one."""
    from ironsight.cluster.raycluster import _starts_a_new_ray

    monkeypatch.setenv("RAY_ADDRESS", ray_address)
    assert _starts_a_new_ray() is starts


@pytest.mark.cluster
def test_every_socket_of_the_embedded_ray_listens_on_loopback_only(monkeypatch):
    import ray
    from ray._private import ray_constants

    from ironsight.cluster.raycluster import connect

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # else ray.init() joins that cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster_flag = ray_constants.ENABLE_RAY_CLUSTER
    with connect(None, num_cpus=2):
        # The flag Ironsight turns off while ray.init runs is back as it was.
        assert ray_constants.ENABLE_RAY_CLUSTER == cluster_flag
        node = ray._private.worker._global_node

        @ray.remote
        def task() -> int:
            return os.getpid()

        @ray.remote
        class Actor:
            def pid(self) -> int:
                return os.getpid()

        actor = Actor.remote()
        worker_pids = {ray.get(task.remote()), ray.get(actor.pid.remote())}
        import ray.data

        assert ray.data.range(20).map(lambda row: row).count() == 20
        sockets = _sockets_of(_session_processes(node.get_session_dir_path()))
        ray.kill(actor)

    assert sockets, "found no listening socket of the embedded Ray"
    ports = {port for _, _, _, port in sockets}
    pids = {pid for pid, *_ in sockets}
    gcs_port = int(node.gcs_address.rsplit(":", 1)[1])
    # The servers that listened on all interfaces before: the GCS, the raylet, the workers.
    assert gcs_port in ports and node.node_manager_port in ports, sockets
    assert worker_pids & pids, (worker_pids, sockets)
    wide = [s for s in sockets if not _is_loopback(s[2])]
    assert not wide, "listening beyond loopback (pid, process, address, port): " + repr(wide)
    assert node.node_ip_address == "127.0.0.1"  # what the servers chose their bind address by
