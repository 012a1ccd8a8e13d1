"""The Ray Jobs API client: the address, token authentication, plain errors, following a job.

| name                  | what it does                                                          |
|-----------------------|-----------------------------------------------------------------------|
| :func:`resolve_address` | ``--address``, else ``IRONSIGHT_JOBS_ADDRESS``, else ``RAY_ADDRESS`` |
| :func:`job_client`    | a ``JobSubmissionClient`` that sends the token; asks a guarded endpoint at once |
| :func:`plain_errors`  | the Jobs SDK's exceptions as Ironsight's, with what to do             |
| :func:`existing_status` | a job's status, or None when the cluster has no job of that id      |
| :func:`follow`        | wait for a terminal status, optionally streaming the driver's log     |
| :func:`log_tail`      | the last lines of a job's driver log                                  |

The commands built on it (``ironsight submit/status/logs/stop``) are
:mod:`ironsight.jobs.submit`; ``ironsight schedule --address`` uses both.

**Token authentication.** Ray 2.60's ``JobSubmissionClient`` adds ``Authorization: Bearer``
itself only when ``RAY_AUTH_MODE=token`` is set in *this* process. Ironsight sends the header
whenever a token is found, in Ray's order: ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``,
and (with ``RAY_AUTH_MODE=token``) ``~/.ray/auth_token``. The token is never printed or logged.

| the cluster answers              | error                 | exit | message                        |
|----------------------------------|-----------------------|------|--------------------------------|
| 401 (no token sent)              | :class:`AuthRefused`  | 2    | "refused: the cluster requires a token, set RAY_AUTH_TOKEN" |
| 403 (a wrong token)              | :class:`AuthRefused`  | 2    | the token was rejected          |
| nothing (head down, wrong port)  | :class:`ClusterUnreachable` | 1 | cannot reach the Ray Jobs API |
| 404 for a submission id          | ``InvalidInput``      | 2    | no job of that id               |
| any other error                  | ``JobFailed``         | 1    | the Jobs API failed             |
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ironsight.cluster.errors import InvalidInput, JobFailed

if TYPE_CHECKING:  # ray is imported lazily: importing the CLI must not pay for it
    from ray.job_submission import JobSubmissionClient

__all__ = ["ADDRESS_ENV", "LOG_TAIL_LINES", "TERMINAL", "AuthRefused", "ClusterUnreachable", "client_address",
           "existing_status", "follow", "job_client", "log_tail", "plain_errors", "resolve_address"]

# Looked up in this order when --address is not given.
ADDRESS_ENV = ("IRONSIGHT_JOBS_ADDRESS", "RAY_ADDRESS")
# Lines of the driver log shown when a job fails: enough for a Python traceback.
LOG_TAIL_LINES = 40
# Status polling interval: the Jobs API is cheap, and a human watches this.
POLL_S = 1.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class ClusterUnreachable(JobFailed):
    """The Jobs API at the address did not answer (exit 1)."""


class AuthRefused(InvalidInput):
    """The cluster refused the request: no token, or a wrong one (exit 2)."""


# --- the client -------------------------------------------------------------------------------


def resolve_address(address: str | None) -> str:
    """The Jobs API address: the argument, else ``IRONSIGHT_JOBS_ADDRESS``, else ``RAY_ADDRESS``.

    A bare ``HOST:PORT`` gets ``http://``.

    >>> resolve_address("127.0.0.1:8265")
    'http://127.0.0.1:8265'
    """
    for value in (address, *(os.environ.get(name) for name in ADDRESS_ENV)):
        if value:
            value = value.strip().rstrip("/")
            return value if "://" in value else f"http://{value}"
    raise InvalidInput(
        "no cluster address: pass --address http://HEAD:8265 (the Ray dashboard port) or set "
        "IRONSIGHT_JOBS_ADDRESS"
    )


# A Ray auth token is a few dozen characters; more means RAY_AUTH_TOKEN_PATH names the wrong file.
MAX_TOKEN_BYTES = 4096


def _token() -> str | None:
    """The auth token, looked up as Ray does; None when there is none. Never log the result."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not path and os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        default = Path.home() / ".ray" / "auth_token"
        path = str(default) if default.is_file() else None
    if path:
        from ironsight.cluster.storage import check_regular_file

        full = str(Path(path).expanduser())
        try:
            check_regular_file(full, "RAY_AUTH_TOKEN_PATH")  # a FIFO or /dev/zero would hang here
            with open(full, "rb") as f:
                token = f.read(MAX_TOKEN_BYTES + 1).decode("utf-8", "replace").strip()
        except OSError as exc:
            raise InvalidInput(
                f"RAY_AUTH_TOKEN_PATH={path} cannot be read ({exc.strerror}); point it at the "
                "token file or set RAY_AUTH_TOKEN"
            ) from None
        if not token:
            raise InvalidInput(f"token file {path} is empty; write the cluster's token into it")
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidInput(f"token file {path} holds more than {MAX_TOKEN_BYTES} bytes; it should "
                               "hold the cluster's token only")
        return token
    return None


@contextmanager
def plain_errors(address: str, submission_id: str | None = None) -> Iterator[None]:
    """Turn the Jobs SDK's exceptions into ours, with messages that say what to do."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        if "Authentication failed" in str(exc):  # 403: a token was sent and is wrong
            raise AuthRefused(
                f"refused: the cluster at {address} rejected the token; set RAY_AUTH_TOKEN (or "
                "RAY_AUTH_TOKEN_PATH) to the cluster's token"
            ) from None
        raise AuthRefused(
            f"refused: the cluster at {address} requires a token, set RAY_AUTH_TOKEN"
        ) from None
    except (ConnectionError, requests.exceptions.ConnectionError):
        raise ClusterUnreachable(
            f"cannot reach the Ray Jobs API at {address}: is the head running and its dashboard "
            "port (default 8265) reachable from here? Check --address or IRONSIGHT_JOBS_ADDRESS"
        ) from None
    except RuntimeError as exc:
        text = str(exc)
        if submission_id is not None and "status code 404" in text:
            raise InvalidInput(
                f"no job {submission_id!r} on the cluster at {address}; list jobs with "
                f"`ray job list --address {address}`"
            ) from None
        raise JobFailed(f"the Jobs API at {address} failed: {text}") from None


def job_client(address: str | None = None) -> JobSubmissionClient:
    """A ``JobSubmissionClient`` for ``address`` that sends the auth token when one is set.

    Args:
        address: ``http://HEAD:8265``; default from ``IRONSIGHT_JOBS_ADDRESS``, then ``RAY_ADDRESS``.

    Raises:
        ClusterUnreachable: nothing answers at the address (exit 1).
        AuthRefused: the cluster requires a token and none (or a wrong one) was sent (exit 2).
    """
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    token = _token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with plain_errors(url):
        client = JobSubmissionClient(url, headers=headers)
        # The constructor only asks /api/version, which may answer without a token: ask a
        # guarded endpoint too, so a missing token is reported here, before anything is sent.
        client.list_jobs()
    return client


def client_address(client: JobSubmissionClient) -> str:
    """The address `client` talks to, for messages."""
    return getattr(client, "_address", "the cluster")


def existing_status(client: JobSubmissionClient, submission_id: str) -> str | None:
    """The status of ``submission_id`` on the cluster, or None when there is no such job."""
    address = client_address(client)
    try:
        with plain_errors(address, submission_id):
            return str(client.get_job_status(submission_id).value)
    except InvalidInput as exc:
        if isinstance(exc, AuthRefused):
            raise
        return None


# --- following a job --------------------------------------------------------------------------


def log_tail(client: JobSubmissionClient, submission_id: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the job's driver log."""
    with plain_errors(client_address(client), submission_id):
        logs = client.get_job_logs(submission_id)
    return "\n".join(logs.rstrip("\n").splitlines()[-lines:])


async def _tail(client: JobSubmissionClient, submission_id: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(submission_id):
        out.write(chunk)
        out.flush()


async def _follow(
    client: JobSubmissionClient,
    submission_id: str,
    logs: bool,
    on_status: Callable[[str], None],
    out: TextIO,
    poll_s: float,
    timeout_s: float | None,
) -> str:
    tail = asyncio.ensure_future(_tail(client, submission_id, out)) if logs else None
    seen = None
    start = time.monotonic()
    try:
        while True:
            status = str((await asyncio.to_thread(client.get_job_status, submission_id)).value)
            if status != seen:
                on_status(status)
                seen = status
            if status in TERMINAL:
                break
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise JobFailed(
                    f"job {submission_id} still {status} after {timeout_s:.0f} s; it keeps "
                    f"running: `ironsight status {submission_id}` or `ironsight stop {submission_id}`"
                )
            await asyncio.sleep(poll_s)
        if tail is not None:
            # The log socket closes once the driver's log is drained; give it a moment.
            await asyncio.wait_for(asyncio.shield(tail), timeout=10)
    except asyncio.TimeoutError:
        pass
    finally:
        if tail is not None and not tail.done():
            tail.cancel()
    return seen


def follow(
    client: JobSubmissionClient,
    submission_id: str,
    *,
    logs: bool = False,
    on_status: Callable[[str], None] | None = None,
    out: TextIO | None = None,
    poll_s: float = POLL_S,
    timeout_s: float | None = None,
) -> str:
    """Wait for a job to reach a terminal state; return it (``SUCCEEDED``, ``FAILED``, ``STOPPED``).

    Args:
        client: from :func:`job_client`.
        submission_id: the job.
        logs: stream the driver's log to ``out`` while waiting.
        on_status: called with each new status (default: print ``ID: STATUS`` to stderr).
        out: where logs go (default stdout).
        poll_s: seconds between status polls.
        timeout_s: give up waiting (the job keeps running) and raise ``JobFailed``.
    """
    if on_status is None:

        def on_status(status: str) -> None:
            print(f"{submission_id}: {status}", file=sys.stderr, flush=True)

    with plain_errors(client_address(client), submission_id):
        return asyncio.run(
            _follow(client, submission_id, logs, on_status, out or sys.stdout, poll_s, timeout_s)
        )
