"""Where the run history lives: its database URL, the engine, and what a message may show of it.

The store is a SQL database reached through SQLAlchemy 2 Core: by default an embedded SQLite
file `$IRONSIGHT_HOME/history.db` (`IRONSIGHT_HOME` defaults to `~/.local/share/ironsight`),
or any SQLAlchemy URL in `IRONSIGHT_HISTORY_URL` / `--history-db`.

| database   | URL                                                  | tested against             |
|------------|------------------------------------------------------|----------------------------|
| SQLite     | `sqlite:////abs/path/history.db`, or a plain path    | one file per machine       |
| PostgreSQL | `postgresql+psycopg://USER:PASSWORD@HOST:5432/DB` (`postgres://` and `postgresql://` mean the same; driver: `pip install 'ironsight[postgres]'`) | a real server (Debian's), shared by every runner |

A database that cannot be opened (server down, wrong password, no driver) is refused with its
URL, password masked (`user:***@host`), the driver's reason and what to check: `ironsight
history` exits 2, a job runs on without history and says so. Passwords never reach a message
or log; connections time out after `CONNECT_TIMEOUT_S` (10 s; `?connect_timeout=N` in the URL
wins).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; every stored datetime is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.timezone.utc)


def default_history_url() -> str:
    """`sqlite:///$IRONSIGHT_HOME/history.db` (`IRONSIGHT_HOME`: `~/.local/share/ironsight`)."""
    home = os.environ.get("IRONSIGHT_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share", "ironsight"
    )
    return "sqlite:///" + str(Path(home).resolve() / "history.db")


def history_url(value: str | None = None) -> str:
    """The history database URL: `value` (a URL or a file path), else the env, else the default.

    >>> history_url("/tmp/h.db")
    'sqlite:////tmp/h.db'
    >>> history_url("postgresql+psycopg://db.internal/ironsight")
    'postgresql+psycopg://db.internal/ironsight'
    """
    value = value or os.environ.get("IRONSIGHT_HISTORY_URL")
    if not value:
        return default_history_url()
    if "://" in value:
        scheme, _, rest = value.partition("://")
        if scheme in ("postgres", "postgresql"):  # no driver named: psycopg 3, not psycopg2
            return "postgresql+psycopg://" + rest
        return value
    return "sqlite:///" + str(Path(value).expanduser().resolve())


def safe_url(url: str) -> str:
    """`url` with its password masked, for messages and logs.

    >>> safe_url("postgresql+psycopg://ci:s3cret@db.internal:5432/ironsight")
    'postgresql+psycopg://ci:***@db.internal:5432/ironsight'
    >>> safe_url("postgresql+psycopg://db.internal/ironsight?user=ci&password=s3cret")
    'postgresql+psycopg://db.internal/ironsight?password=***&user=ci'
    """
    try:
        text = sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        text = url
    return _scrub(text, url)


def _scrub(text: str, url: str | None) -> str:
    """`text` without the password of `url` (as written or URL-encoded) or other credentials;
    unlike `redact`, a URL keeps its user name (`user:***@host`: whose password to check)
    and a query keeps its other parameters.

    >>> _scrub("auth failed for postgresql://ci:pw@db/x?password=pw&sslmode=require", None)
    'auth failed for postgresql://ci:***@db/x?password=***&sslmode=require'
    """
    try:
        password = sa.engine.make_url(url).password if url else None
    except sa.exc.ArgumentError:
        password = None
    if password:
        from urllib.parse import quote

        for form in {str(password), quote(str(password), safe="")}:
            text = text.replace(form, "***")
    text = re.sub(r"(://[^/\s:@]+):[^/\s@]+@", r"\1:***@", text)
    text = re.sub(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", "***", text)
    return re.sub(r"(?i)((?:secret|token|password|key)[\w-]*\s*[=:]\s*)[^\s&]+", r"\1***", text)


def error_line(exc: BaseException, url: str | None = None) -> str:
    """The first line of a database error, without SQLAlchemy's wrapper or a credential.

    >>> error_line(RuntimeError("connection failed: refused\\n\\tIs the server running?"))
    'connection failed: refused'
    """
    orig = getattr(exc, "orig", None)  # the driver's own error inside SQLAlchemy's
    text = str(orig if orig is not None else exc).strip()
    return _scrub(text.splitlines()[0] if text else type(exc).__name__, url)


# Seconds to wait for a database server to accept a connection (libpq `connect_timeout`; a URL
# query `?connect_timeout=N` wins), and for another process's SQLite write to end: an
# unreachable host fails the command instead of hanging it; two runs finishing at once wait.
CONNECT_TIMEOUT_S = 10
SQLITE_BUSY_TIMEOUT_S = 30


def create_engine(url: str) -> sa.engine.Engine:
    """The engine for a history URL.

    | backend    | options                                                                  |
    |------------|--------------------------------------------------------------------------|
    | SQLite     | waits up to `SQLITE_BUSY_TIMEOUT_S` for another process's write          |
    | PostgreSQL | `CONNECT_TIMEOUT_S`; pooled connections are checked before use (a job    |
    |            | records its end hours after its start, maybe after a server restart);   |
    |            | session time zone UTC                                                    |
    """
    parsed = sa.engine.make_url(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif parsed.get_backend_name() == "postgresql":
        options["pool_pre_ping"] = True
        # times come back in UTC whatever the server's TimeZone (as SQLite's do)
        connect: dict[str, Any] = {}
        if "options" not in parsed.query:  # the URL's own libpq options win
            connect["options"] = "-c timezone=UTC"
        if "connect_timeout" not in parsed.query:
            connect["connect_timeout"] = CONNECT_TIMEOUT_S
        options["connect_args"] = connect
    return sa.create_engine(parsed, **options)


def redact(text: str) -> str:
    """Drop credentials an error message may carry (URL user:password, AWS keys, tokens)."""
    text = re.sub(r"(://)[^/\s:@]+:[^/\s@]+@", r"\1***@", text)
    text = re.sub(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", "***", text)
    return re.sub(r"(?i)((?:secret|token|password|key)[\w-]*\s*[=:]\s*)\S+", r"\1***", text)
