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

Retries and the sorting of errors (what is retried, what fails at once and with which
message) live in :mod:`ironsight.cluster.storage_errors`.

Writes are atomic: :func:`publish_bytes` renames a fully written temp file into place
locally (after fsync) and does a single PUT on S3, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import posixpath
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.storage_errors import no_such_bucket, with_retries

_GLOB_CHARS = set("*?[")


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

    The SDK makes each request once: :func:`ironsight.cluster.storage_errors.with_retries` is
    the one retry layer.
    """
    env = os.environ
    kwargs: dict = {
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        # One attempt per request: with_retries is the only retry layer (storage_errors docstring).
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
