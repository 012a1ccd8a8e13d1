"""Stream one planned shard of a corpus: its rows, their image bytes, and the kept columns.

:func:`iter_shard` reads one :class:`~ironsight.cluster.corpus.Shard` of a
:class:`~ironsight.cluster.corpus.CorpusPlan` (both only strings and numbers, shipped to Ray
tasks): only its row groups and the columns it needs, in batches, re-resolving the filesystem
from the URI. A row group must yield exactly the rows its footer claims. A dropped
object-store connection mid-row-group reopens the file and goes on after the rows already
yielded (each row once), within the storage retry budget. :func:`read_kept` reads the kept
columns of one shard, in the driver, when the shard is committed.

Images of the ``path`` layout (and ``hf`` rows without bytes, and every file of an image
folder) are fetched from their path: an absolute local path, a ``file:`` URI, an ``s3://``
URI, or a path relative to the Parquet file's directory. With allowed roots
(:mod:`ironsight.cluster.paths`) a fetched path outside every root is never read: its row
gets the error ``path_outside_allowed_roots: ...``. A fetched path never fails the job,
whatever it names; its row gets an error instead:

| the path names                                        | the row's error                    |
|-------------------------------------------------------|------------------------------------|
| nothing (or a scheme other than ``file:``/``s3://``)  | ``missing_object: PATH``           |
| a FIFO, socket, device, directory, or a file under ``/proc``, ``/sys``, ``/dev`` | ``not_a_regular_file: ...`` (never opened) |
| a file over :data:`MAX_IMAGE_BYTES` (256 MiB)         | ``too_large: ...``                 |
| a file the OS will not read (EIO, EACCES, ...)        | ``unreadable: EIO (...) reading PATH`` |
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ironsight.cluster import paths, storage, storage_errors
from ironsight.cluster.corpus import CorpusPlan, Shard
from ironsight.cluster.errors import InvalidInput, JobFailed
from ironsight.cluster.footer import ImageLayout

_S3_FETCH_THREADS = 8  # concurrent GETs for path-only images within one batch
# The most bytes read for one image fetched by path: an uncompressed 8-bit RGB image of
# decode.DEFAULT_MAX_PIXELS (3 x 89,478,485 bytes) just fits; anything larger cannot decode
# within that limit anyway, and a runaway file must not fill a decode worker's memory.
MAX_IMAGE_BYTES = 256 * 1024 * 1024
log = logging.getLogger("ironsight")


def iter_shard(plan: CorpusPlan, shard: Shard, *, batch_rows: int = 256) -> Iterator[dict]:
    """Stream one shard in batches, reading only its row groups and the needed columns.

    Yields dicts with ``"id"`` (list of str), ``"image"`` (list of bytes or None),
    ``"error"`` (list of None or ``"reason: detail"``), ``"row"`` (int64 array, row index
    within the file) and, when ``plan.label_column`` is set, ``"label"`` (int64, null -> -1).

    Row groups are read one at a time. A row group that cannot be read, or that yields
    another number of rows than its footer claims (a footer that lies in a way
    :func:`~ironsight.cluster.corpus.plan_corpus` cannot see), raises :class:`~ironsight.cluster.errors.JobFailed` naming the file
    and row group; rows already yielded are lost with the shard, which is never committed.

    >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> from ironsight.cluster.corpus import plan_corpus
    >>> d = tempfile.mkdtemp()
    >>> pq.write_table(pa.table({"image": [b"a", None, b"c"]}), f"{d}/a.parquet")
    >>> plan = plan_corpus(d)
    >>> batch = next(iter_shard(plan, plan.shards[0]))
    >>> batch["id"], batch["image"], batch["error"][1].split(":")[0]
    (['a.parquet#0', 'a.parquet#1', 'a.parquet#2'], [b'a', None, b'c'], 'null_image')
    """
    if batch_rows < 1:
        raise InvalidInput(f"batch_rows must be >= 1, got {batch_rows}")
    if plan.layout is ImageLayout.FILES:
        yield from _iter_image_files(plan, shard, batch_rows)
        return
    loc = storage.resolve(shard.file)
    name = plan.file_names[shard.file_index] if plan.file_names else posixpath.basename(loc.path)
    wanted = [plan.image_column, plan.id_column, plan.label_column]
    columns = list(dict.fromkeys(c for c in wanted if c is not None))
    fetcher = _Fetcher(loc, plan.allowed_roots)
    source = storage_errors.with_retries(lambda: loc.fs.open_input_file(loc.path),
                                  what=f"opening {shard.file}")
    reopened: list = []
    try:
        try:
            parquet = pq.ParquetFile(source)
            claimed = [parquet.metadata.row_group(rg).num_rows for rg in shard.row_groups]
        except (pa.ArrowException, OSError, ValueError) as exc:
            why = " ".join(str(exc).split())
            raise JobFailed(f"reading the footer of {shard.file} failed: {why}") from exc
        if sum(claimed) != shard.num_rows:
            raise JobFailed(
                f"{shard.file} changed since the job was planned: row groups "
                f"{shard.row_groups[0]}-{shard.row_groups[-1]} hold {sum(claimed)} rows, not "
                f"{shard.num_rows}; rerun to plan it again"
            )
        row = shard.row_start

        def reopen() -> pq.ParquetFile:
            """A fresh handle on the file, after a dropped connection mid-read."""
            fresh = storage_errors.with_retries(lambda: loc.fs.open_input_file(loc.path),
                                         what=f"reopening {shard.file}")
            reopened.append(fresh)
            return pq.ParquetFile(fresh)

        checked = _checked_batches(parquet, shard, claimed, columns, batch_rows,
                                   reopen=reopen if _resumable(loc) else None)
        for batch in _rebatch(checked, batch_rows):
            n = batch.num_rows
            rows = np.arange(row, row + n, dtype=np.int64)  # (n,) int64 row within the file
            images, errors = _images(plan, batch.column(plan.image_column), rows, name, fetcher)
            out: dict = {"id": _ids(plan, batch, rows, name), "image": images, "error": errors,
                         "row": rows}
            if plan.label_column is not None:
                labels = pc.fill_null(batch.column(plan.label_column), -1)
                out["label"] = labels.cast(pa.int64()).to_numpy(zero_copy_only=False)
            yield out
            row += n
    finally:
        source.close()
        for handle in reopened:
            handle.close()
        fetcher.close()


def read_kept(plan: CorpusPlan, shard: Shard) -> pa.Table:
    """The kept columns of one shard's rows, in row order, typed as in the input.

    Raises:
        JobFailed: the file cannot be read, or its row groups hold another number of rows
            than planned (it changed since).
    """
    loc = storage.resolve(shard.file)
    source = storage_errors.with_retries(lambda: loc.fs.open_input_file(loc.path),
                                  what=f"opening {shard.file}")
    try:
        try:
            table = pq.ParquetFile(source).read_row_groups(
                list(shard.row_groups), columns=list(plan.keep_columns), use_threads=False)
        except (pa.ArrowException, OSError, ValueError) as exc:
            why = " ".join(str(exc).split())
            raise JobFailed(f"reading the kept columns of {shard.file} row groups "
                            f"{shard.row_groups[0]}-{shard.row_groups[-1]} failed: {why}") from exc
    finally:
        source.close()
    if table.num_rows != shard.num_rows:
        raise JobFailed(f"{shard.file} changed since the job was planned: row groups "
                        f"{shard.row_groups[0]}-{shard.row_groups[-1]} hold {table.num_rows} "
                        f"rows, not {shard.num_rows}; rerun to plan it again")
    return table


def _iter_image_files(plan: CorpusPlan, shard: Shard, batch_rows: int) -> Iterator[dict]:
    """An image folder's shard: ``num_rows`` files from ``row_start``, read like path rows."""
    fetcher = _Fetcher(storage.resolve(shard.file), plan.allowed_roots)
    try:
        end = shard.row_start + shard.num_rows
        for start in range(shard.row_start, end, batch_rows):
            stop = min(start + batch_rows, end)
            fetched = fetcher.fetch_many(list(plan.files[start:stop]))
            yield {"id": list(plan.file_names[start:stop]),
                   "image": [blob for blob, _ in fetched],
                   "error": [err for _, err in fetched],
                   "row": np.arange(start, stop, dtype=np.int64)}
    finally:
        fetcher.close()


def _checked_batches(parquet: pq.ParquetFile, shard: Shard, claimed: list[int],
                     columns: list[str], batch_rows: int,
                     reopen: Callable[[], pq.ParquetFile] | None = None) -> Iterator[pa.RecordBatch]:
    """The shard's row groups, one at a time, each yielding exactly the rows its footer claims.

    A transient object-store error while reading (a dropped connection, throttling, a 5xx:
    :func:`_network_error`) reopens the file with ``reopen`` (given for S3 files) and goes
    on after the rows already yielded, within the storage retry budget (the SDK itself makes
    each request once, so this is the read's only retry layer). Any other read or decode
    error, a row group holding more or fewer rows than its footer says, or retries running
    out raise :class:`~ironsight.cluster.errors.JobFailed` naming the file and the row group.
    """
    for rg, expected in zip(shard.row_groups, claimed, strict=True):
        got, failures = 0, 0
        while True:
            batches = parquet.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=columns,
                                           use_threads=False)
            skip = got  # rows of this row group already yielded before a retry
            try:
                for batch in batches:
                    if skip:
                        if batch.num_rows <= skip:
                            skip -= batch.num_rows
                            continue
                        batch, skip = batch.slice(skip), 0
                    got += batch.num_rows
                    if got > expected:
                        break
                    yield batch
                break
            except (pa.ArrowException, OSError, ValueError) as exc:
                why = " ".join(str(exc).split())  # pyarrow's messages span lines
                failures += 1
                if reopen is None or not _network_error(exc) or failures >= storage_errors.max_attempts():
                    tries = f" (after {failures} attempts)" if failures > 1 else ""
                    raise JobFailed(f"reading {shard.file} row group {rg} failed{tries}: {why}") from exc
                log.debug("reading %s row group %d: %s; reopening (attempt %d of %d)",
                          shard.file, rg, why, failures + 1, storage_errors.max_attempts())
                storage_errors.backoff_sleep(failures)
                parquet = reopen()
        if got != expected:
            raise JobFailed(
                f"reading {shard.file} row group {rg} failed: it holds "
                f"{'more than ' if got > expected else ''}{got} rows but its footer says "
                f"{expected} (the file is corrupt)"
            )


def _resumable(loc: storage.Location) -> bool:
    """Whether a read of ``loc`` that fails mid-stream is worth reopening: only object storage
    drops connections; a local read error is the file's own."""
    return loc.is_s3


def _network_error(exc: BaseException) -> bool:
    """A transient object-store error while streaming (the AWS SDK's own errors, a dropped or
    timed-out connection): worth reopening the file. A corrupt page is not."""
    network = isinstance(exc, (ConnectionError, TimeoutError)) or "AWS Error" in str(exc)
    return network and storage_errors.is_transient(exc)


def _rebatch(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``size`` rows (the last may be shorter), across row groups."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(size - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == size:
                yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                pending, count = [], 0
    if count:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


def _ids(plan: CorpusPlan, batch: pa.RecordBatch, rows: np.ndarray, name: str) -> list[str]:
    if plan.id_column is None:
        return [f"{name}#{r}" for r in rows.tolist()]
    values = batch.column(plan.id_column).to_pylist()
    pairs = zip(values, rows.tolist(), strict=True)
    return [str(v) if v is not None else f"{name}#{r}" for v, r in pairs]


def _images(plan: CorpusPlan, col: pa.Array, rows: np.ndarray, name: str, fetcher: _Fetcher
            ) -> tuple[list[bytes | None], list[str | None]]:
    def null(r: int) -> str:
        return f"null_image: column {plan.image_column!r} is null in {name} row {r}"

    rows_list = rows.tolist()
    if plan.layout is ImageLayout.PATH:
        data = [None] * len(rows_list)
        paths = col.to_pylist()
    elif plan.layout is ImageLayout.HF_STRUCT:
        valid = col.is_valid().to_pylist()
        children = col.flatten()  # respects the array's offset, unlike StructArray.field
        data = [b if v else None for b, v in
                zip(children[col.type.get_field_index("bytes")].to_pylist(), valid, strict=True)]
        paths = [p if v else None for p, v in
                 zip(children[col.type.get_field_index("path")].to_pylist(), valid, strict=True)]
    else:
        data = col.to_pylist()
        paths = [None] * len(data)
    images: list[bytes | None] = list(data)
    errors: list[str | None] = [None] * len(data)
    to_fetch = [i for i, (d, p) in enumerate(zip(data, paths, strict=True)) if d is None and p]
    fetched = fetcher.fetch_many([paths[i] for i in to_fetch])
    for i, (blob, err) in zip(to_fetch, fetched, strict=True):
        images[i], errors[i] = blob, err
    for i, (d, p) in enumerate(zip(data, paths, strict=True)):
        if d is None and not p:
            errors[i] = null(rows_list[i])
    return images, errors


def _read_local(local: str, path: str) -> tuple[bytes | None, str | None]:
    """A local image file's bytes, or why it cannot be read (``path`` as the row wrote it).

    Only a regular file on a real filesystem is opened (:func:`ironsight.cluster.storage.check_regular_file`):
    a FIFO would block, ``/dev/zero`` never ends, ``/proc/kmsg`` hangs and ``/proc/self/mem``
    fails with EIO. It is opened non-blocking and checked again on the open descriptor, so
    a file swapped for a FIFO in between cannot hang the task either, and at most
    :data:`MAX_IMAGE_BYTES` + 1 bytes are read. Any OS error is the row's error, not the job's.
    """
    try:
        storage.check_regular_file(local, "image")
        fd = os.open(local, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None, f"missing_object: {path}"
    except InvalidInput as exc:
        return None, f"not_a_regular_file: {str(exc).split(';')[0]}"
    except OSError as exc:
        return None, _unreadable(exc, path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, f"not_a_regular_file: image {path} is no longer a regular file"
        if st.st_size > MAX_IMAGE_BYTES:
            return None, _too_large(path)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except OSError as exc:
        return None, _unreadable(exc, path)
    finally:
        os.close(fd)
    if len(data) > MAX_IMAGE_BYTES:  # it grew after the fstat
        return None, _too_large(path)
    return data, None


def _unreadable(exc: OSError, path: str) -> str:
    """``unreadable: EIO (Input/output error) reading PATH``, from any OSError."""
    code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    why = exc.strerror or str(exc) or type(exc).__name__
    return f"unreadable: {f'{code} ({why})' if code else why} reading {path}"


def _too_large(path: str) -> str:
    return (f"too_large: image {path} is larger than {MAX_IMAGE_BYTES:,} bytes, the most "
            "Ironsight reads for one image")


class _Fetcher:
    """Reads images referenced by path, relative to one Parquet file's directory.

    With ``roots`` (normalised, :func:`ironsight.cluster.paths.parse_roots`), a path that resolves outside
    every root is refused before anything is opened or even looked up.
    """

    def __init__(self, parquet: storage.Location, roots: tuple[str, ...] = ()) -> None:
        self._parquet = parquet
        self._roots = roots
        self._s3: pafs.FileSystem | None = parquet.fs if parquet.is_s3 else None
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def _locate(self, path: str) -> storage.Location | None:
        if path.startswith("s3://"):
            if self._s3 is None:
                self._s3 = storage.s3_filesystem()
            return storage.Location(self._s3, path[len("s3://"):].rstrip("/"), path)
        if path.startswith("file:"):
            local = "/" + path[len("file:"):].lstrip("/")
            return storage.Location(pafs.LocalFileSystem(), local, local)
        if "://" in path:
            return None
        if os.path.isabs(path):
            return storage.Location(pafs.LocalFileSystem(), os.path.normpath(path), path)
        parent = self._parquet
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(parent.path), path))
        uri = f"s3://{joined}" if parent.is_s3 else joined
        return storage.Location(parent.fs, joined, uri)

    def fetch(self, path: str) -> tuple[bytes | None, str | None]:
        loc = self._locate(path)
        if loc is None:
            return None, (f"missing_object: {path} (only local paths and s3:// URIs can be "
                          "fetched)")
        outside = paths.check_within(f"s3://{loc.path}" if loc.is_s3 else loc.path, self._roots)
        if outside:
            named = outside if loc.uri == path else f"{path!r} -> {outside}"
            return None, f"path_outside_allowed_roots: {named}"
        if not loc.is_s3:
            return _read_local(loc.path, path)
        try:
            return storage.read_bytes(loc, max_bytes=MAX_IMAGE_BYTES, what="image"), None
        except FileNotFoundError:
            return None, f"missing_object: {path}"
        except InvalidInput:  # read_bytes refuses only an object over max_bytes
            return None, _too_large(path)

    def fetch_many(self, paths: list[str]) -> list[tuple[bytes | None, str | None]]:
        if len(paths) > 1 and (self._parquet.is_s3 or any(p.startswith("s3://") for p in paths)):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_S3_FETCH_THREADS)
            return list(self._pool.map(self.fetch, paths))
        return [self.fetch(p) for p in paths]
