"""Retries and error classification for :mod:`ironsight.cluster.storage`: what may pass on
retry, what fails at once, and the message that names the fix.

Retries: one layer, ours. The AWS SDK inside pyarrow makes each request once
(``AwsStandardS3RetryStrategy(max_attempts=1)``); :func:`with_retries` (tenacity) decides
what to retry, because only here can an error be sorted and each retry be logged (at ``-v``,
logger ``ironsight.storage``). The two layers nested before (10 SDK attempts inside 4 of
ours) took minutes to give up on a host that does not even resolve. Errors are sorted by
:func:`classify_error`:

| error (as pyarrow reports it)                                   | what happens                    |
|-----------------------------------------------------------------|---------------------------------|
| ``NETWORK_CONNECTION`` … ``Could not resolve host`` (DNS)        | at once: :class:`StorageError`, "the endpoint host H does not resolve: check AWS_ENDPOINT_URL" |
| ``NO_SUCH_BUCKET`` (or a listing of a bucket that is not there) | at once: "no such bucket 'B' at endpoint E: check the bucket name" |
| ``INVALID_ACCESS_KEY_ID``, ``SIGNATURE_DOES_NOT_MATCH``, expired or invalid token | at once: "the credentials were rejected …: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" |
| ``ACCESS_DENIED``, HTTP 403                                      | at once: "access denied to s3://B/K: check the credentials' permissions", or "no credentials found: set …" when none is configured |
| another 4xx (400, 405, 409, …); a local ``EACCES``/``ENOSPC``/``EROFS``… | at once: :class:`JobFailed` naming the operation |
| ``FileNotFoundError``, :class:`InvalidInput`                    | raised as they are (the caller decides) |
| throttling (``SLOW_DOWN``, 429, 503), other 5xx, connection refused/reset, timeouts | retried |

Budget of the retried ones, per operation: at most ``IRONSIGHT_S3_MAX_ATTEMPTS`` attempts
(default 8) and 60 s since the first; waits 0.5, 1, 2, 4, 8, 8, 8 s (exponential, capped at
8 s, plus up to 0.5 s of jitter), about 32 s in all: enough for an object store restarting,
then :class:`JobFailed` "OPERATION failed after N attempts: …". A request that hangs is cut by
the SDK's timeouts (connect 5 s, request 30 s) and counts as one attempt.

Reads of an already opened file (``open_input_file`` then ``read_at``: Parquet row groups in
the decode tasks) are single requests with no retry of their own; a failure there fails the
shard's task (``JobFailed``), the committed shards stay and a rerun resumes.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlparse

from ironsight.cluster.errors import EXIT_INVALID, InvalidInput, IronsightError, JobFailed

T = TypeVar("T")
log = logging.getLogger("ironsight.storage")
# The retry budget of one operation (see the module docstring): 8 attempts, waits 0.5 s
# doubling to 8 s (about 32 s in all), never past 60 s since the first attempt.
_DEFAULT_S3_ATTEMPTS = 8
_RETRY_BASE_S = 0.5
_RETRY_MAX_WAIT_S = 8.0
_RETRY_BUDGET_S = 60.0


class StorageError(IronsightError):
    """The object store refused in a way no retry can fix: a host that does not resolve, a
    bucket that does not exist, rejected or missing credentials, access denied.

    Raised at once, never retried; the message names the fix. Exit code 2, as for bad input:
    the settings (``AWS_ENDPOINT_URL``, the bucket in a URI, the credentials) are wrong.
    """

    exit_code = EXIT_INVALID


def os_reason(exc: OSError) -> str:
    """The OS's reason for a failed file operation, in lower case for a one-line message.

    >>> os_reason(OSError(errno.ENOSPC, "No space left on device"))
    'no space left on device'
    """
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def is_transient(exc: BaseException) -> bool:
    """Whether an I/O error may pass on retry: throttling, a 5xx, a dropped connection (not a
    missing file, not a permanent object-store error, see :func:`classify_error`)."""
    return isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and classify_error(exc) is None


def _sleep(seconds: float) -> None:
    """The retries' one wait. Tests replace this function, not ``time.sleep``: patching the
    global ``time.sleep`` would also make every other thread of the process (the metrics
    refresher, Ray's) spin."""
    time.sleep(seconds)


def backoff_sleep(failures: int, base_delay: float = _RETRY_BASE_S) -> None:
    """Sleep before retry number ``failures`` (1, 2, ...): the same doubling, capped, jittered
    waits as :func:`with_retries`, for loops that must retry by hand (a stream resumed mid-file)."""
    wait = min(_RETRY_MAX_WAIT_S, base_delay * 2 ** (failures - 1)) + random.uniform(0, base_delay)
    _sleep(wait)


def with_retries(
    fn: Callable[[], T], *, what: str, attempts: int | None = None, base_delay: float = _RETRY_BASE_S
) -> T:
    """Call ``fn``; retry what may pass (throttling, 5xx, a dropped connection), fail at once
    on what cannot (see the module docstring's table and :func:`classify_error`).

    The only retry layer: the SDK makes each request once. ``attempts`` defaults to
    ``IRONSIGHT_S3_MAX_ATTEMPTS`` (8); waits grow from ``base_delay`` (doubling, capped at
    8 s, jittered) and stop 60 s after the first attempt. Each retry is logged at debug level
    (``-v``). Missing files and :class:`InvalidInput` pass through untouched.

    Raises:
        StorageError: a permanent object-store error (host, bucket, credentials, access).
        JobFailed: another permanent error, or the retries ran out; names ``what`` and the cause.
    """
    import tenacity

    total = attempts if attempts is not None else max_attempts()

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.debug("%s: attempt %d of %d failed (%s); retrying in %.1f s",
                  what, state.attempt_number, total, _one_line(exc), wait)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, total)) | tenacity.stop_after_delay(_RETRY_BUDGET_S),
        wait=tenacity.wait_exponential(multiplier=base_delay, max=_RETRY_MAX_WAIT_S)
        + tenacity.wait_random(0, base_delay),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=before_sleep,
        sleep=lambda seconds: _sleep(seconds),  # looked up at call time: tests patch _sleep
        reraise=True,
    )
    try:
        return retrying(fn)
    except (FileNotFoundError, InvalidInput):
        raise
    except OSError as exc:
        permanent = classify_error(exc)
        if isinstance(permanent, StorageError):
            raise permanent from exc
        if permanent is not None:
            raise JobFailed(f"{what} failed: {permanent}") from exc
        tries = retrying.statistics.get("attempt_number", total)
        raise JobFailed(f"{what} failed after {tries} attempt{'s' if tries != 1 else ''}: {_one_line(exc)}") from exc


def max_attempts() -> int:
    """Attempts per storage operation: ``IRONSIGHT_S3_MAX_ATTEMPTS``, default 8."""
    raw = os.environ.get("IRONSIGHT_S3_MAX_ATTEMPTS", "")
    try:
        return max(1, int(raw)) if raw.strip() else _DEFAULT_S3_ATTEMPTS
    except ValueError:
        raise InvalidInput(f"IRONSIGHT_S3_MAX_ATTEMPTS={raw!r} is not a whole number") from None


# How pyarrow (the AWS SDK for C++ through arrow/filesystem/s3fs.cc) words S3 errors:
#   "When listing objects under key 'x/' in bucket 'b': AWS Error NO_SUCH_BUCKET during
#    ListObjectsV2 operation: The specified bucket does not exist (Request ID: …)"
#   "… AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 6, Could not
#    resolve hostname; Details: Could not resolve host: no-such-host.invalid"
#   "… AWS Error ACCESS_DENIED during HeadObject operation: No response body."
#   "… AWS Error UNKNOWN (HTTP status 503) during …"
_AWS_ERROR = re.compile(r"AWS Error (?P<code>[A-Z_]+)(?: \(HTTP status (?P<status>\d{3})\))?")
_BUCKET = re.compile(r"bucket '(?P<bucket>[^']*)'")
_KEY = re.compile(r"key '(?P<key>[^']*)' in bucket '(?P<bucket>[^']*)'")
_DNS = re.compile(r"Could not resolve host(?:name)?(?::\s*(?P<host>[^\s;]+))?|curlCode: 6\b|Resolve host", re.I)
_BAD_CREDENTIALS = {
    "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "INVALID_CLIENT_TOKEN_ID",
    "EXPIRED_TOKEN", "INVALID_TOKEN", "MISSING_AUTHENTICATION_TOKEN", "INCOMPLETE_SIGNATURE",
}
_DENIED = {"ACCESS_DENIED", "UNRECOGNIZED_CLIENT"}
_TRANSIENT_4XX = {"408", "429"}  # request timeout, too many requests
# Local OS errors that no retry fixes.
_PERMANENT_ERRNOS = {
    errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
    errno.ENAMETOOLONG, errno.EDQUOT, errno.EFBIG, errno.ELOOP,
}


def classify_error(exc: OSError, *, env: dict[str, str] | None = None) -> IronsightError | None:
    """The error to raise at once for ``exc``, or None when retrying may help.

    ``env`` (default ``os.environ``) tells the endpoint and whether credentials are set, for
    the message. Rows of the module docstring's table.

    >>> e = OSError("When listing objects under key 'x/' in bucket 'typo': AWS Error "
    ...             "NO_SUCH_BUCKET during ListObjectsV2 operation: The specified bucket does not exist")
    >>> print(classify_error(e, env={}))
    no such bucket 'typo' at endpoint s3.us-east-1.amazonaws.com: check the bucket name
    >>> classify_error(OSError("AWS Error SLOW_DOWN during PutObject operation: Please reduce"), env={}) is None
    True
    """
    env = os.environ if env is None else env
    text = str(exc)
    match = _AWS_ERROR.search(text)
    if match is None:
        if exc.errno in _PERMANENT_ERRNOS:
            where = f" ({exc.filename})" if exc.filename else ""
            return JobFailed(f"{os_reason(exc)}{where}")
        if _DNS.search(text):
            return _dns_error(text, env)
        return None  # no AWS code: a local or network error that may pass
    code, status = match.group("code"), match.group("status")
    if code == "NETWORK_CONNECTION":
        return _dns_error(text, env) if _DNS.search(text) else None
    if code == "NO_SUCH_BUCKET" or "NoSuchBucket" in text:
        bucket = _BUCKET.search(text)
        return no_such_bucket(bucket.group("bucket") if bucket else "?", env)
    if code in _BAD_CREDENTIALS:
        if not credentials_configured(env):
            return StorageError(_NO_CREDENTIALS)
        why = text.split(" operation: ", 1)[-1].split(" (Request ID")[0].strip()
        return StorageError(
            f"the credentials were rejected by endpoint {endpoint_name(env)} ({code}: {why}): check "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) or the profile in AWS_PROFILE"
        )
    if code in _DENIED or status == "403":
        if not credentials_configured(env):
            return StorageError(_NO_CREDENTIALS)
        key = _KEY.search(text)
        bucket = _BUCKET.search(text)
        target = (f"s3://{key.group('bucket')}/{key.group('key')}" if key
                  else f"s3://{bucket.group('bucket')}" if bucket else f"endpoint {endpoint_name(env)}")
        # A HEAD request's 403 has no body: a wrong key and a missing permission look the same.
        return StorageError(f"access denied to {target}: check the credentials' permissions, and "
                            f"that the key (AWS_ACCESS_KEY_ID, or profile {env.get('AWS_PROFILE') or 'default'}) "
                            "is the one meant for this bucket")
    if status is not None and status.startswith("4") and status not in _TRANSIENT_4XX:
        return JobFailed(f"the object store refused the request (HTTP {status}): {_one_line(exc)}")
    return None  # throttling, 5xx, timeouts, refused or reset connections


_NO_CREDENTIALS = ("no credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile "
                   "(AWS_PROFILE, ~/.aws/credentials); the request went out unsigned and was refused")


def credentials_configured(env: dict[str, str] | os._Environ | None = None) -> bool:
    """Whether any source of AWS credentials is visible: keys, a profile, a credentials or
    config file, web identity or container credentials. An EC2 instance role cannot be seen
    without asking the metadata service; a refusal then still says "no credentials found",
    which is what happened: none reached the request.
    """
    env = os.environ if env is None else env
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if any(env.get(k) for k in ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")):
        return True
    files = [env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials",
             env.get("AWS_CONFIG_FILE") or "~/.aws/config"]
    return any(os.path.isfile(os.path.expanduser(f)) for f in files)


def endpoint_name(env: dict[str, str] | os._Environ | None = None) -> str:
    """The S3 endpoint requests go to, as the user would name it."""
    env = os.environ if env is None else env
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        return endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    return f"s3.{region}.amazonaws.com"


def no_such_bucket(bucket: str, env: dict[str, str] | os._Environ | None = None) -> StorageError:
    return StorageError(f"no such bucket {bucket!r} at endpoint {endpoint_name(env)}: check the bucket name")


def _dns_error(text: str, env) -> StorageError:
    match = re.search(r"Could not resolve host:\s*(?P<host>[^\s;]+)", text)
    host = match.group("host") if match else urlparse(endpoint_name(env)).hostname or endpoint_name(env)
    if env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"):
        var = "AWS_ENDPOINT_URL_S3" if env.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
        return StorageError(f"the endpoint host {host} does not resolve: check {var} "
                            f"(now {env.get(var)!r}) and this machine's DNS")
    return StorageError(f"the endpoint host {host} does not resolve: check this machine's DNS and network, "
                        "or set AWS_ENDPOINT_URL for an S3-compatible store")


def _one_line(exc: BaseException | None) -> str:
    """An exception's message on one line, without the SDK's request id."""
    text = " ".join(str(exc).split()) if exc is not None else ""
    return re.sub(r" \(Request ID: [^)]*\)", "", text) or type(exc).__name__
