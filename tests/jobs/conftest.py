"""A real PostgreSQL server for the run-history tests, started from Debian's `postgresql`
package on loopback (`apt-get install postgresql`; `.ci/run` installs it).

| fixture           | scope    | what                                                          |
|-------------------|----------|---------------------------------------------------------------|
| `postgres_server` | session  | one server: 127.0.0.1 on a free port, its unix socket in its  |
|                   |          | own tmp dir, scram-sha-256 password auth; stopped at the end  |
| `postgres_url`    | function | a fresh database owned by the (non-superuser) test user:     |
|                   |          | `postgresql+psycopg://ironsight:PASSWORD@127.0.0.1:PORT/t_…`  |

The server refuses to run as root, so as root initdb and pg_ctl run as the `postgres` system
user (`runuser -u postgres --`). Tests using them SKIP, saying why, where no server can be
started: no binaries under /usr/lib/postgresql/*/bin, root without a `postgres` user, no
psycopg, or initdb/pg_ctl failing (the reason is their last output line).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest

TEST_USER = "ironsight"


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    admin_user: str
    admin_password: str
    user: str
    password: str

    def admin_connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.admin_user,
                               password=self.admin_password, dbname=dbname, autocommit=True,
                               connect_timeout=10)

    def url(self, database: str, *, password: str | None = None, port: int | None = None) -> str:
        return (f"postgresql+psycopg://{self.user}:{password or self.password}@{self.host}:"
                f"{port or self.port}/{database}")


def _version_key(path: str) -> tuple:
    version = path.split("/")[4]  # /usr/lib/postgresql/<version>/bin/initdb
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'ironsight[postgres]')")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if not found:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
                    "(Debian: apt-get install postgresql)")
    bindir = os.path.dirname(found[-1])
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' system user to run "
                        "PostgreSQL as (it refuses root)")
        if shutil.which("runuser"):
            as_user = ["runuser", "-u", "postgres", "--"]
        else:  # no util-linux runuser: su with a quoted command line
            as_user = ["su", "postgres", "-s", "/bin/sh", "-c"]

    def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = list(cmd)
        if as_user and as_user[0] == "su":
            argv = [*as_user, " ".join(map(_quote, argv))]
        elif as_user:
            argv = [*as_user, *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                   "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})

    root = tempfile.mkdtemp(prefix="ironsight-pg-")  # under /tmp: the postgres user can reach it
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")
    pwfile = os.path.join(root, "pw")
    admin_password, password = secrets.token_hex(16), secrets.token_hex(16)
    with open(pwfile, "w") as f:
        f.write(admin_password + "\n")
    os.chmod(pwfile, 0o600)
    if owner is not None:
        for path in (root, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    started = False
    try:
        init = run(f"{bindir}/initdb", "-D", data, "-U", "postgres", f"--pwfile={pwfile}",
                   "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {_last_line(init)}")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60 "
                   "-c shared_buffers=16MB")
        start = run(f"{bindir}/pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", options,
                    "start")
        if start.returncode != 0:
            tail = open(log).read().strip().splitlines()[-1:] if os.path.exists(log) else []
            pytest.skip(f"pg_ctl start failed: {_last_line(start)} {' '.join(tail)}")
        started = True
        server = PostgresServer("127.0.0.1", port, "postgres", admin_password, TEST_USER, password)
        with server.admin_connect() as conn:
            conn.execute(f"CREATE ROLE {TEST_USER} LOGIN PASSWORD '{password}'")
        yield server
    finally:
        if started:
            run(f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A new, empty database owned by the test user; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with postgres_server.admin_connect() as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {TEST_USER}")
    yield postgres_server.url(name)
    with postgres_server.admin_connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
