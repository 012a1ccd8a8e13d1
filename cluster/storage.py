"""Local and S3-compatible storage behind one small API, through ``pyarrow.fs``.

URIs are either local paths (``/data/corpus``, ``./out``, ``file:///data``) or
``s3://bucket/prefix``. For S3 the usual AWS environment is honoured, as boto3 does:

| variable                                  | use                                        |
|-------------------------------------------|--------------------------------------------|
| ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` | S3-compatible endpoint (MinIO, moto, Ceph) |
| ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN`` | credentials      |
| ``AWS_REGION``/``AWS_DEFAULT_REGION``     | region (default ``us-east-1``)             |
| ``IRONSIGHT_S3_MAX_ATTEMPTS``             | attempts per operation, retries included (default 8) |

pyarrow ignores ``AWS_ENDPOINT_URL`` by itself, so it is passed as ``endpoint_override``.

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

Writes are atomic: :func:`publish_bytes` renames a fully written temp file into place
locally (after fsync) and does a single PUT on S3, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import io
import logging
import os
import posixpath
import random
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TypeVar
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from ironsight.cluster.errors import EXIT_INVALID, InvalidInput, IronsightError, JobFailed

T = TypeVar("T")
log = logging.getLogger("ironsight.storage")

_GLOB_CHARS = set("*?[")
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


@dataclass(frozen=True)
class Location:
    """A resolved URI: the filesystem, the path inside it, and the URI as the user wrote it."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def join(self, *parts: str) -> Location:
        """A child location; ``parts`` are relative names."""
        path = posixpath.join(self.path, *parts)
        uri = self.uri.rstrip("/") + "/" + "/".join(parts) if parts else self.uri
        return Location(self.fs, path, uri)


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem configured from the standard AWS environment variables.

    The SDK makes each request once: :func:`with_retries` is the one retry layer.
    """
    env = os.environ
    kwargs: dict = {
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        # One attempt per request: with_retries is the only retry layer (module docstring).
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1),
        "connect_timeout": 5,
        "request_timeout": 30,
    }
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = env["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = env["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> Location:
    """Resolve a local path or ``s3://`` URI into a :class:`Location`.

    >>> resolve("/tmp/x").path
    '/tmp/x'
    """
    uri = str(uri)
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise InvalidInput(f"{uri!r} names no bucket; expected s3://BUCKET/PREFIX")
        path = (parsed.netloc + parsed.path).rstrip("/")
        return Location(s3_filesystem(), path, uri.rstrip("/"))
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise InvalidInput(f"unsupported URI scheme {scheme!r} in {uri!r}; use a local path or s3://")
    local = uri[len("file://") :] if uri.startswith("file://") else uri
    path = os.path.abspath(os.path.expanduser(local))
    return Location(pafs.LocalFileSystem(), path, path)


def is_glob(path: str) -> bool:
    return any(c in _GLOB_CHARS for c in path)


def list_files(loc: Location, suffix: str | None = None) -> list[pafs.FileInfo]:
    """Files at a location: the file itself, every file under a directory, or a glob's matches.

    Hidden files and names starting with ``_`` (``_SUCCESS``, ``_manifest.json``) are
    skipped, as Spark and Ray do. Sorted by path so plans are deterministic.
    """
    path = loc.path
    if is_glob(path):
        base = path
        while is_glob(base):
            base = posixpath.dirname(base)
        infos = with_retries(
            lambda: loc.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)),
            what=f"listing {loc.uri}",
        )
        files = [i for i in infos if i.type == pafs.FileType.File and _glob_match(i.path, path)]
        if not files:
            check_bucket(loc)
    else:
        info = with_retries(lambda: loc.fs.get_file_info(path), what=f"reading {loc.uri}")
        if info.type == pafs.FileType.File:
            return [info]
        if info.type == pafs.FileType.NotFound:
            check_bucket(loc)  # a mistyped bucket says so, instead of "no files"
            return []
        files = with_retries(
            lambda: loc.fs.get_file_info(pafs.FileSelector(path, recursive=True)),
            what=f"listing {loc.uri}",
        )
        files = [i for i in files if i.type == pafs.FileType.File]

    def visible(info: pafs.FileInfo) -> bool:
        # Relative to the listed directory (a glob's fixed prefix), so hidden or ``_``
        # directories a glob's wildcard walks into are skipped too.
        rel = info.path[len(base if is_glob(path) else path) :]
        return not any(part.startswith((".", "_")) for part in rel.split("/") if part)

    out = [f for f in files if visible(f) and (suffix is None or f.path.endswith(suffix))]
    return sorted(out, key=lambda i: i.path)


def check_input(uri: str, allowed_roots: tuple[str, ...] | list[str] = ()) -> None:
    """Refuse an INPUT that names nothing, with what is light to import (no torch, no Ray).

    The CLI calls it first, so a mistyped path or bucket, an endpoint host that does not
    resolve or refused credentials answer in about a second of CPU instead of after torch's
    import (several seconds); ``ironsight.cluster.corpus.plan_corpus`` then checks the files
    themselves, as before. A path is looked up, not walked (one request on S3, however large
    the prefix: a folder with no visible file is left for the plan to refuse); a glob is
    listed.

    Raises:
        InvalidInput: ``uri`` is outside ``allowed_roots`` or matches no files (the wording of
            ``plan_corpus``).
        StorageError: the object store refused (no such bucket, host, credentials, access).
    """
    from ironsight.cluster import paths

    outside = paths.check_within(uri, paths.parse_roots(allowed_roots, source="allowed_roots"))
    if outside:
        raise InvalidInput(f"input: {outside}")
    loc = resolve(uri)
    if is_glob(loc.path):
        found = bool(list_files(loc))
    else:
        info = with_retries(lambda: loc.fs.get_file_info(loc.path), what=f"reading {loc.uri}")
        found = info.type != pafs.FileType.NotFound
        if not found:
            check_bucket(loc)
    if not found:
        raise InvalidInput(
            f"{uri!r} matches no files; expected a Parquet file, a directory of them, a glob "
            "or s3://bucket/prefix"
        )


def check_bucket(loc: Location) -> None:
    """Raise :class:`StorageError` "no such bucket …" when ``loc`` is on S3 and its bucket does
    not exist; nothing for a local path. One HEAD request: call it where a path was not found.
    """
    if not loc.is_s3:
        return
    bucket = loc.path.split("/", 1)[0]
    info = with_retries(lambda: loc.fs.get_file_info(bucket), what=f"checking the bucket of {loc.uri}")
    if info.type == pafs.FileType.NotFound:
        raise no_such_bucket(bucket)


def list_dir(loc: Location) -> list[pafs.FileInfo]:
    """The files directly in the directory ``loc`` (not in its sub-folders), sorted by name.

    Unlike :func:`list_files` this never walks a tree (one ``FileSelector(recursive=False)``,
    a single delimited listing on S3), expands no glob and hides no name: it is how a writer
    looks at its own OUTPUT, where ``output: /`` or a huge folder must not be walked and a
    sub-folder's files are never its own. A missing directory lists as ``[]``.
    """
    infos = with_retries(
        lambda: loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=False, allow_not_found=True)),
        what=f"listing {loc.uri}",
    )
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.base_name)


def parquet_metadata(loc: Location) -> dict[bytes, bytes] | None:
    """The key-value metadata of a Parquet file's Arrow schema, from its footer alone.

    None when ``loc`` is not a readable Parquet file (not Parquet, truncated, not a regular
    file): the caller decides what such a file is. Unreachable storage raises
    :class:`JobFailed` as every read does.
    """
    import pyarrow.parquet as pq

    if not loc.is_s3:
        try:
            check_regular_file(loc.path, "file")
        except (InvalidInput, OSError):
            return None

    def read() -> dict[bytes, bytes] | None:
        try:
            with loc.fs.open_input_file(loc.path) as f:
                return dict(pq.ParquetFile(f).schema_arrow.metadata or {})
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, FileNotFoundError):
            return None

    return with_retries(read, what=f"reading the footer of {loc.uri}")


def os_reason(exc: OSError) -> str:
    """The OS's reason for a failed file operation, in lower case for a one-line message.

    >>> os_reason(OSError(errno.ENOSPC, "No space left on device"))
    'no space left on device'
    """
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def _glob_match(path: str, pattern: str) -> bool:
    """Shell glob semantics: ``*``, ``?`` and ``[...]`` never cross a ``/``."""
    parts, pats = path.split("/"), pattern.split("/")
    return len(parts) == len(pats) and all(
        fnmatch.fnmatchcase(a, p) for a, p in zip(parts, pats, strict=True)
    )


def exists(loc: Location) -> bool:
    info = with_retries(lambda: loc.fs.get_file_info(loc.path), what=f"checking {loc.uri}")
    return info.type != pafs.FileType.NotFound


# Pseudo-filesystems whose "regular files" are kernel interfaces: reading them hangs
# (/proc/kmsg), fails with EIO (/proc/self/mem) or never ends.
_PSEUDO_ROOTS = ("/proc", "/sys", "/dev")


def check_regular_file(path: str, what: str = "file") -> os.stat_result:
    """``os.stat`` of a local ``path`` that is a regular file on a real filesystem.

    FIFOs, sockets, devices and files under ``/proc``, ``/sys`` or ``/dev`` are refused
    with :class:`InvalidInput` before anything opens them (opening a FIFO blocks until a
    writer comes; ``/dev/zero`` never ends).
    """
    real = os.path.realpath(path)
    in_pseudo = any(real == root or real.startswith(root + "/") for root in _PSEUDO_ROOTS)
    if in_pseudo and not real.startswith("/dev/shm/"):  # tmpfs: real files
        raise InvalidInput(
            f"{what} {path} is a device or kernel file, not a regular file; Ironsight reads "
            "only regular files"
        )
    st = os.stat(real)  # FileNotFoundError / PermissionError pass through to the caller
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a directory" if stat.S_ISDIR(st.st_mode)
            else "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode)
            else "a device"
        )
        raise InvalidInput(f"{what} {path} is {kind}, not a regular file; Ironsight reads only regular files")
    return st


def read_bytes(loc: Location, *, max_bytes: int | None = None, what: str = "file") -> bytes:
    """Whole object or file as bytes (with retries on S3).

    A local ``loc`` must be a regular file (:func:`check_regular_file`); with ``max_bytes``
    a larger file or object is refused with :class:`InvalidInput` naming ``what`` and the
    limit, and never more than ``max_bytes + 1`` bytes are read (the size on disk may lie,
    for instance while another process appends).
    """
    if not loc.is_s3:
        st = check_regular_file(loc.path, what)
        if max_bytes is not None and st.st_size > max_bytes:
            raise _too_large(loc, what, max_bytes)

    def read() -> bytes:
        with loc.fs.open_input_stream(loc.path) as f:
            return f.read() if max_bytes is None else f.read(max_bytes + 1)

    data = with_retries(read, what=f"reading {loc.uri}")
    if max_bytes is not None and len(data) > max_bytes:
        raise _too_large(loc, what, max_bytes)
    return data


def _too_large(loc: Location, what: str, max_bytes: int) -> InvalidInput:
    return InvalidInput(
        f"{what} {loc.uri} is larger than {max_bytes:,} bytes, the most Ironsight reads for "
        f"a {what}; is it the right file?"
    )


def makedirs(loc: Location) -> None:
    if not loc.is_s3:
        os.makedirs(loc.path, exist_ok=True)


def publish_bytes(loc: Location, data: bytes | pa.Buffer) -> None:
    """Make ``data`` appear at ``loc`` atomically: all of it or nothing (:func:`publishing`).

    On S3: one PUT of a buffer smaller than the multipart threshold is atomic by itself.
    """
    if loc.is_s3:

        def put() -> None:
            with loc.fs.open_output_stream(loc.path) as out:
                out.write(data)

        with_retries(put, what=f"writing {loc.uri}")
        return
    with publishing(loc) as f:
        f.write(memoryview(data))


@contextlib.contextmanager
def publishing(loc: Location) -> Iterator[BinaryIO]:
    """A binary file to write that appears at ``loc`` atomically when the block ends: the one
    atomic publish of Ironsight (outputs, manifests, reports, packed corpora, schedule state).

    Locally: written as ``.NAME.tmp-<8 hex>`` beside ``loc`` (the name the OUTPUT cleanup
    knows as Ironsight's own), fsynced, ``os.replace``-d onto ``loc``, then the folder fsynced.
    If the block raises, the temporary file is removed and ``loc`` is left as it was.
    On S3: written to memory, then one PUT (:func:`publish_bytes`).

    >>> import tempfile
    >>> loc = resolve(os.path.join(tempfile.mkdtemp(), "state.json"))
    >>> with publishing(loc) as f:
    ...     _ = f.write(b"{}")
    >>> open(loc.path).read(), sorted(os.listdir(os.path.dirname(loc.path)))
    ('{}', ['state.json'])
    """
    if loc.is_s3:
        buf = io.BytesIO()
        yield buf
        publish_bytes(loc, buf.getvalue())
        return
    directory = os.path.dirname(loc.path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(loc.path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, loc.path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def delete(loc: Location) -> None:
    def rm() -> None:
        try:
            loc.fs.delete_file(loc.path)
        except FileNotFoundError:
            pass

    with_retries(rm, what=f"deleting {loc.uri}")


def is_transient(exc: BaseException) -> bool:
    """Whether an I/O error may pass on retry: throttling, a 5xx, a dropped connection (not a
    missing file, not a permanent object-store error, see :func:`classify_error`)."""
    return isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and classify_error(exc) is None


def backoff_sleep(failures: int, base_delay: float = _RETRY_BASE_S) -> None:
    """Sleep before retry number ``failures`` (1, 2, ...): the same doubling, capped, jittered
    waits as :func:`with_retries`, for loops that must retry by hand (a stream resumed mid-file)."""
    wait = min(_RETRY_MAX_WAIT_S, base_delay * 2 ** (failures - 1)) + random.uniform(0, base_delay)
    time.sleep(wait)


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
        sleep=lambda seconds: time.sleep(seconds),  # looked up at call time: tests patch it
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
