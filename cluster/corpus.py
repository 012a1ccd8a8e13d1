"""Input corpora: plan Parquet files into deterministic shards, then stream one shard.

Planning reads only Parquet footers (never a data page) and cuts every file into shards of
consecutive row groups, at most ``max_rows_per_shard`` rows each (a single larger row group
is a shard of its own). The same files give the same shards, so a rerun sees the same
shard ids. :class:`CorpusPlan` and :class:`Shard` hold only strings and numbers: they are
shipped to Ray tasks, and :func:`iter_shard` re-resolves the filesystem from the URI.

The image column can be laid out four ways (auto-detected when not given):

| layout    | column type                                            | bytes come from          |
|-----------|--------------------------------------------------------|--------------------------|
| ``bytes`` | ``binary`` / ``large_binary``                          | the column               |
| ``hf``    | ``struct<bytes: binary, path: string>`` (HF ``Image``) | ``bytes``, else ``path`` |
| ``spark`` | ``content: binary`` next to ``path: string``           | the column               |
| ``path``  | ``string``: a path or ``s3://`` URI                    | fetched from the path    |

Fetched paths are absolute local paths, ``file:`` URIs, ``s3://`` URIs, or paths relative to
the Parquet file's directory. With allowed roots (``plan_corpus(allowed_roots=...)``, see
:mod:`ironsight.cluster.paths`) a fetched path outside every root is never read: its row gets the error
``path_outside_allowed_roots: ...``; the input and every planned file must lie inside too.
A fetched path never fails the job, whatever it names; its row gets an error instead:

| the path names                                        | the row's error                    |
|-------------------------------------------------------|------------------------------------|
| nothing (or a scheme other than ``file:``/``s3://``)  | ``missing_object: PATH``           |
| a FIFO, socket, device, directory, or a file under ``/proc``, ``/sys``, ``/dev`` | ``not_a_regular_file: ...`` (never opened) |
| a file over :data:`MAX_IMAGE_BYTES` (256 MiB)         | ``too_large: ...``                 |
| a file the OS will not read (EIO, EACCES, ...)        | ``unreadable: EIO (...) reading PATH`` |

A folder (or glob) of image files is a corpus too (layout ``files``): every file whose name
ends in ``.jpg``, ``.jpeg``, ``.png`` or ``.webp`` (any case), under the folder recursively,
sorted by path and cut into shards of ``max_rows_per_shard`` consecutive files. A row's id is
the file's path relative to the folder (POSIX separators: ``cats/001.jpg``); its bytes are
read like a ``path`` row's (same regular-file and size checks, same error rows). A folder
mixing image files with Parquet files is refused; any other file among the images is a bad
file (``skip_bad_files`` skips it). Local folders and ``s3://`` prefixes both work.

| INPUT holds                                   | read as                                   |
|-----------------------------------------------|-------------------------------------------|
| Parquet files only (or other non-image files) | a Parquet corpus (non-Parquet files are bad files) |
| image files only                              | an image folder, one row per file         |
| image files and ``.parquet`` files            | refused: "INPUT mixes N image files with M Parquet files" |
| image files and other files (``notes.txt``)   | an image folder; the other files are bad files |

Kept columns (``keep_columns``, ``--keep-columns``): input columns copied to the output rows,
typed as in the input. ``["*"]`` keeps every column except the image column (and the id
column when it is named ``id``, which the output has already); the image column is kept only
when named (with a warning: its bytes are copied into every output file). A name the input
does not have is refused with a did-you-mean; a kept column must have the same type in every
file. :func:`read_kept` reads them for one shard, in the driver, when the shard is committed.

Ids: the given ``id_column``, else the first of ``id``/``key``/``path`` that is a string or
integer column (integers become strings), else ``"{file relative to INPUT}#{row}"``; a null
id falls back to that derived id. Labels (for audits): the given ``label_column`` or
``label`` when it is an integer column; a null label is -1.

Bad files, detected before any work starts: a file that does not start with the ``PAR1``
magic is "not a Parquet file" (so is anything under 12 bytes); one that does but whose end
magic, footer length or footer does not parse has a "corrupted footer" (a truncated upload,
say); a file with 0 rows, without a usable image column, or whose columns disagree with the
first good file (in sorted order) is also bad, and so is a footer that parses but contradicts
its file ("inconsistent footer": a column chunk past the end of the data, a negative count,
row groups that do not add up to the file's rows, a flat column with more or fewer values
than its row group has rows). Every file under an input directory counts:
keep images referenced by path outside it. All bad files are reported together in one
:class:`~ironsight.cluster.errors.InvalidInput`, or, with ``skip_bad_files``, listed in
``CorpusPlan.skipped`` and left out of the plan.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import hashlib
import json
import logging
import os
import posixpath
import stat
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ironsight.cluster import paths, storage
from ironsight.cluster.errors import InvalidInput, JobFailed

IMAGE_NAMES = ("image", "img", "bytes", "content")  # preferred when several columns qualify
PATH_NAMES = ("image", "img", "image_path", "image_uri", "filepath", "file_path", "path", "uri")
ID_NAMES = ("id", "key", "path")
LABEL_NAME = "label"
# Footer reads on S3 are latency-bound (a HEAD and one or two ranged GETs per file):
# 16 in flight plan 1,000 files in seconds without hammering the endpoint.
_S3_FOOTER_THREADS = 16
_FOOTER_READ = 64 * 1024  # one ranged read covers most footers (pyarrow's default too)
_S3_FETCH_THREADS = 8  # concurrent GETs for path-only images within one batch
_MAX_LISTED_PROBLEMS = 20
# The most bytes read for one image fetched by path: an uncompressed 8-bit RGB image of
# decode.DEFAULT_MAX_PIXELS (3 x 89,478,485 bytes) just fits; anything larger cannot decode
# within that limit anyway, and a runaway file must not fill a decode worker's memory.
MAX_IMAGE_BYTES = 256 * 1024 * 1024
# An image folder's files, by extension (compared lower-cased).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
KEEP_ALL = "*"
log = logging.getLogger("ironsight")


class ImageLayout(str, Enum):
    """How the image bytes are stored in the corpus (see the module table)."""

    BYTES = "bytes"
    HF_STRUCT = "hf"
    SPARK = "spark"
    PATH = "path"
    FILES = "files"  # a folder of image files: one row per file, no Parquet


@dataclass(frozen=True)
class Shard:
    """Consecutive row groups of one file: the unit of work and of commit.

    >>> Shard(3, "/c/part-3.parquet", 3, (0, 1, 2, 3), 0, 1000).shard_id
    'f00003-rg00000-00003'
    """

    index: int
    file: str
    file_index: int
    row_groups: tuple[int, ...]
    row_start: int
    num_rows: int

    @property
    def shard_id(self) -> str:
        """``f{file}-rg{first}-{last}`` (row groups inclusive): stable and filename-safe."""
        return f"f{self.file_index:05d}-rg{self.row_groups[0]:05d}-{self.row_groups[-1]:05d}"


@dataclass(frozen=True)
class CorpusPlan:
    """Every shard of a corpus, and how to read its columns.

    Attributes:
        uri: the input as given.
        files: URIs of the planned files, sorted.
        shards: all shards, in file then row-group order.
        image_column: the column holding images (or the struct / path column).
        layout: how images are stored in ``image_column``.
        id_column: the id column, or None for ids derived from file and row.
        label_column: integer class labels, or None.
        num_rows: rows over all shards.
        skipped: ``(file URI, reason)`` of bad files left out with ``skip_bad_files``.
        file_names: each file relative to the input (used in derived ids), parallel to files.
        file_sizes: bytes of each file, parallel to files (part of the fingerprint).
        allowed_roots: normalised roots that fetched image paths must lie in; empty: no limit.
            They travel with the plan to the Ray tasks that fetch.
        keep_columns: input columns copied to the output rows (resolved: no ``*``).

    For an image folder (layout ``files``), ``files`` and ``file_names`` list the images
    (a row each), ``image_column`` is ``""`` and every shard's ``file`` is the folder.
    """

    uri: str
    files: tuple[str, ...]
    shards: tuple[Shard, ...]
    image_column: str
    layout: ImageLayout
    id_column: str | None
    label_column: str | None
    num_rows: int
    skipped: tuple[tuple[str, str], ...] = ()
    file_names: tuple[str, ...] = ()
    file_sizes: tuple[int, ...] = ()
    allowed_roots: tuple[str, ...] = ()
    keep_columns: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        """sha256 hex over file names and sizes, shards and columns: what a resume must match.

        Allowed roots are part of it when set (they decide which rows are error rows); a plan
        without roots hashes as before they existed.
        """
        doc: dict = {
            "files": [[n, s] for n, s in zip(self.file_names, self.file_sizes, strict=True)],
            "shards": [[s.file_index, list(s.row_groups), s.row_start, s.num_rows]
                       for s in self.shards],
            "columns": [self.image_column, self.layout.value, self.id_column, self.label_column],
        }
        if self.allowed_roots:
            doc["allowed_roots"] = list(self.allowed_roots)
        if self.keep_columns:
            doc["keep_columns"] = list(self.keep_columns)
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class _Columns:
    image: str
    layout: ImageLayout
    id: str | None
    label: str | None
    kinds: tuple[tuple[str, str], ...]  # (column, kind of type) in the reference file
    keep: tuple[tuple[str, str], ...] = ()  # (kept column, exact type) in the reference file


class _BadFile(Exception):
    """A reason why one file cannot be part of the corpus."""


def plan_corpus(
    uri: str,
    *,
    image_column: str | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    max_rows_per_shard: int = 4096,
    skip_bad_files: bool = False,
    allowed_roots: tuple[str, ...] | list[str] = (),
    keep_columns: Sequence[str] | None = None,
    can_skip: bool = True,
) -> CorpusPlan:
    """Plan a Parquet corpus into shards from the footers alone.

    Args:
        uri: a Parquet file, a directory of them, a glob, or ``s3://bucket/prefix``.
        image_column: the image column; auto-detected when None.
        id_column: the id column; auto-detected when None.
        label_column: the integer label column; ``label`` when None and present.
        max_rows_per_shard: consecutive row groups of a file are grouped up to this many rows.
        skip_bad_files: leave bad files out (listed in ``skipped``) instead of failing.
        allowed_roots: local directories and ``s3://`` prefixes (:mod:`ironsight.cluster.paths`); when
            given, ``uri`` and every file must lie inside one (a file outside, e.g. through a
            symlink, is a bad file), and images fetched by path outside them become error rows.
        keep_columns: input columns to copy to the output (``["*"]``: all but the image
            column); see the module docstring.
        can_skip: whether the caller offers ``skip_bad_files`` (``classify`` does, ``audit``
            does not): a refusal suggests ``--skip-bad-files`` only then.

    Raises:
        InvalidInput: no files match, some file is bad (all named) and not skipped, ``uri``
            is outside ``allowed_roots``, INPUT mixes image and Parquet files, or a named
            column (image, id, label, kept) is not in the first readable file (with a
            did-you-mean) or a kept column has the name of an output column.

    >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> d = tempfile.mkdtemp()
    >>> pq.write_table(pa.table({"image": [b"x"] * 10}), f"{d}/a.parquet", row_group_size=4)
    >>> plan = plan_corpus(d, max_rows_per_shard=8)
    >>> [(s.row_groups, s.num_rows) for s in plan.shards], plan.layout.value, plan.id_column
    ([((0, 1), 8), ((2,), 2)], 'bytes', None)
    """
    if max_rows_per_shard < 1:
        raise InvalidInput(f"max_rows_per_shard must be >= 1, got {max_rows_per_shard}")
    roots = paths.parse_roots(allowed_roots, source="allowed_roots")
    outside = paths.check_within(uri, roots)
    if outside:
        raise InvalidInput(f"input: {outside}")
    loc = storage.resolve(uri)
    infos = storage.list_files(loc)
    if not infos:
        raise InvalidInput(
            f"{uri!r} matches no files; expected a Parquet file, a directory of them, a glob "
            "or s3://bucket/prefix"
        )
    root = _root(loc, infos)
    uris = [_uri(loc, i.path) for i in infos]
    images = [k for k, i in enumerate(infos) if _is_image_name(i.path)]
    if images:
        return _plan_image_folder(uri, loc, root, infos, images, max_rows_per_shard,
                                  skip_bad_files, roots, keep_columns, image_column, id_column,
                                  label_column, can_skip=can_skip)
    footers = _read_footers(loc, infos)

    problems: list[tuple[str, str]] = []
    good: list[tuple[int, pq.FileMetaData]] = []
    columns: _Columns | None = None
    reference = ""
    for k, (file_uri, footer) in enumerate(zip(uris, footers, strict=True)):
        try:
            if isinstance(footer, _BadFile):
                raise footer
            if outside := paths.check_within(file_uri, roots):
                raise _BadFile(outside)
            if footer.num_rows == 0:
                raise _BadFile("has 0 rows")
            schema = footer.schema.to_arrow_schema()
            if columns is None:
                columns = _detect(schema, image_column, id_column, label_column, where=file_uri)
                columns = _with_kept(columns, schema, keep_columns, file_uri)
                reference = file_uri
            else:
                _check_same(schema, columns, reference)
        except _BadFile as exc:
            problems.append((file_uri, str(exc)))
            continue
        good.append((k, footer))

    if problems and not skip_bad_files:
        listed = "\n".join(f"  {f}: {r}" for f, r in problems[:_MAX_LISTED_PROBLEMS])
        more = len(problems) - _MAX_LISTED_PROBLEMS
        raise InvalidInput(
            f"{len(problems)} of {len(uris)} file(s) in {uri!r} cannot be read as an image "
            f"corpus:\n{listed}" + (f"\n  ... and {more} more" if more > 0 else "")
            + f"\nfix or remove them{_skip_advice(can_skip)}"
        )
    if columns is None:
        listed = "\n".join(f"  {f}: {r}" for f, r in problems[:_MAX_LISTED_PROBLEMS])
        raise InvalidInput(f"no usable Parquet file in {uri!r}; all were skipped:\n{listed}")

    files, names, sizes, shards = [], [], [], []
    for file_index, (k, footer) in enumerate(good):
        files.append(uris[k])
        names.append(_relative(root, infos[k].path))
        sizes.append(int(infos[k].size))
        shards.extend(_cut(footer, uris[k], file_index, len(shards), max_rows_per_shard))
    return CorpusPlan(
        uri=str(uri),
        files=tuple(files),
        shards=tuple(shards),
        image_column=columns.image,
        layout=columns.layout,
        id_column=columns.id,
        label_column=columns.label,
        num_rows=sum(s.num_rows for s in shards),
        skipped=tuple(problems),
        file_names=tuple(names),
        file_sizes=tuple(sizes),
        allowed_roots=roots,
        keep_columns=tuple(c for c, _ in columns.keep),
    )


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _plan_image_folder(uri: str, loc: storage.Location, root: str, infos: list[pafs.FileInfo],
                       images: list[int], max_rows: int, skip_bad_files: bool,
                       roots: tuple[str, ...], keep_columns: Sequence[str] | None,
                       image_column: str | None, id_column: str | None,
                       label_column: str | None, *, can_skip: bool = True) -> CorpusPlan:
    """A folder (or glob) of image files: one row per file, in sorted path order."""
    named = [n for n, v in (("image_column", image_column), ("id_column", id_column),
                            ("label_column", label_column)) if v is not None]
    if named:
        raise InvalidInput(f"{uri!r} is a folder of image files, which has no columns: "
                           f"{', '.join(named)} cannot be used with it (`ironsight pack DIR OUT.parquet "
                           "--label-from-folder` makes a Parquet corpus with an id, image and "
                           "label column from it)")
    if keep_columns and list(keep_columns) != [KEEP_ALL]:
        raise InvalidInput(f"{uri!r} is a folder of image files: it has no columns to keep "
                           f"(keep_columns {', '.join(keep_columns)}); each row is one file, "
                           "its id the file's path relative to the folder")
    wanted = set(images)
    parquet = [infos[k].path for k in range(len(infos))
               if k not in wanted and infos[k].path.lower().endswith(".parquet")]
    if parquet:
        raise InvalidInput(
            f"{uri!r} mixes {len(images)} image file(s) ({_relative(root, infos[images[0]].path)}"
            f"{', ...' if len(images) > 1 else ''}) with {len(parquet)} Parquet file(s) "
            f"({_relative(root, parquet[0])}{', ...' if len(parquet) > 1 else ''}): an INPUT is "
            "either a Parquet corpus or a folder of images. Point INPUT at one of them (a glob "
            "like 'DIR/*.parquet' selects the Parquet files), or move the other out"
        )
    problems: list[tuple[str, str]] = []
    files: list[str] = []
    names: list[str] = []
    sizes: list[int] = []
    for k, info in enumerate(infos):
        file_uri = _uri(loc, info.path)
        if k not in wanted:
            problems.append((file_uri, "not an image file (expected "
                             f"{', '.join(IMAGE_EXTENSIONS)} in a folder of images)"))
        elif outside := paths.check_within(file_uri, roots):
            problems.append((file_uri, outside))
        else:
            files.append(file_uri)
            names.append(_relative(root, info.path))
            sizes.append(int(info.size or 0))
    if problems and not skip_bad_files:
        listed = "\n".join(f"  {f}: {r}" for f, r in problems[:_MAX_LISTED_PROBLEMS])
        more = len(problems) - _MAX_LISTED_PROBLEMS
        raise InvalidInput(
            f"{len(problems)} of {len(infos)} file(s) in the image folder {uri!r} cannot be "
            f"read:\n{listed}" + (f"\n  ... and {more} more" if more > 0 else "")
            + f"\nremove them{_skip_advice(can_skip)}"
        )
    if not files:
        raise InvalidInput(f"no usable image file in {uri!r}; all were skipped")
    folder = _uri(loc, root)
    shards = tuple(
        Shard(i, folder, 0, (i,), start, min(max_rows, len(files) - start))
        for i, start in enumerate(range(0, len(files), max_rows))
    )
    return CorpusPlan(
        uri=str(uri),
        files=tuple(files),
        shards=shards,
        image_column="",
        layout=ImageLayout.FILES,
        id_column=None,
        label_column=None,
        num_rows=len(files),
        skipped=tuple(problems),
        file_names=tuple(names),
        file_sizes=tuple(sizes),
        allowed_roots=roots,
    )


def _skip_advice(can_skip: bool) -> str:
    """The end of a bad-files refusal. Written with the flag; the CLI rewrites it as the spec
    key for ``run`` (``ironsight.jobs.cli.fit_hints``); a job without the option gets none."""
    return ", or pass --skip-bad-files to leave them out" if can_skip else ""


def _no_column(option: str, name: str, where: str, names: Sequence[str]) -> InvalidInput:
    """``--label-column: column 'lable' not in FILE; did you mean 'label'? columns: ...``: a
    column the job names is a wrong option, not a bad file (skipping would skip them all)."""
    return InvalidInput(f"{option}: column {name!r} not in {where}; {_did_you_mean(name, names)}"
                        f"columns: {', '.join(names)}")


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _with_kept(cols: _Columns, schema: pa.Schema, keep: Sequence[str] | None,
               file_uri: str) -> _Columns:
    """``cols`` with the kept columns resolved against the reference file's schema."""
    if not keep:
        return cols
    from ironsight.cluster.sink import LABELS_SCHEMA  # the output's own columns

    names = schema.names
    if KEEP_ALL in keep:
        if list(keep) != [KEEP_ALL]:
            raise InvalidInput(f"keep_columns: '*' keeps every column; it cannot be combined "
                               f"with names ({', '.join(keep)})")
        chosen = [n for n in names if n != cols.image and not (n == "id" and n == cols.id)]
        if cols.layout is ImageLayout.SPARK:
            chosen = [n for n in chosen if n != "content"]
    else:
        chosen = list(dict.fromkeys(keep))
        missing = [n for n in chosen if n not in names]
        if missing:
            n = missing[0]
            raise InvalidInput(
                f"keep_columns: {file_uri} has no column {n!r}; {_did_you_mean(n, names)}"
                f"(columns: {', '.join(names)})"
            )
        if cols.image in chosen:
            log.warning("keep_columns names the image column %r: its bytes are copied into "
                        "every output file, which makes OUTPUT about as large as INPUT",
                        cols.image)
    clash = [n for n in chosen if n in LABELS_SCHEMA.names]
    if clash:
        why = " (the id column: the output's id holds its values already)" if (
            clash[0] == "id" and cols.id == "id") else ""
        raise InvalidInput(
            f"keep_columns: input column {clash[0]!r} has the name of an output column{why}; "
            f"output columns: {', '.join(LABELS_SCHEMA.names)}. Leave it out of keep_columns"
        )
    keep_kinds = tuple((n, str(schema.field(n).type)) for n in chosen)
    return dataclasses.replace(cols, keep=keep_kinds)


def read_kept(plan: CorpusPlan, shard: Shard) -> pa.Table:
    """The kept columns of one shard's rows, in row order, typed as in the input.

    Raises:
        JobFailed: the file cannot be read, or its row groups hold another number of rows
            than planned (it changed since).
    """
    loc = storage.resolve(shard.file)
    source = storage.with_retries(lambda: loc.fs.open_input_file(loc.path),
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


def _cut(footer: pq.FileMetaData, file: str, file_index: int, first_index: int,
         max_rows: int) -> list[Shard]:
    shards: list[Shard] = []
    group: list[int] = []
    count = start = 0

    def emit() -> None:
        if count:  # row groups with no rows need no work
            shards.append(Shard(first_index + len(shards), file, file_index, tuple(group),
                                start, count))

    for rg in range(footer.num_row_groups):
        n = footer.row_group(rg).num_rows
        if group and count + n > max_rows:
            emit()
            start += count
            group, count = [], 0
        group.append(rg)
        count += n
    if group:
        emit()
    return shards


def _uri(loc: storage.Location, path: str) -> str:
    return f"s3://{path}" if loc.is_s3 else path


def _root(loc: storage.Location, infos: list[pafs.FileInfo]) -> str:
    """The directory that derived ids are relative to."""
    if storage.is_glob(loc.path):
        base = loc.path
        while storage.is_glob(base):
            base = posixpath.dirname(base)
        return base
    if len(infos) == 1 and infos[0].path == loc.path:
        return posixpath.dirname(loc.path)
    return loc.path


def _relative(root: str, path: str) -> str:
    return path[len(root):].lstrip("/") if root and path.startswith(root) else path


def _read_footers(loc: storage.Location, infos: list[pafs.FileInfo]
                  ) -> list[pq.FileMetaData | _BadFile]:
    def read(info: pafs.FileInfo) -> pq.FileMetaData | _BadFile:
        return _read_footer(loc.fs, info, _uri(loc, info.path))

    if loc.is_s3 and len(infos) > 1:
        with ThreadPoolExecutor(min(_S3_FOOTER_THREADS, len(infos))) as pool:
            return list(pool.map(read, infos))
    return [read(i) for i in infos]


def _read_footer(fs: pafs.FileSystem, info: pafs.FileInfo, uri: str
                 ) -> pq.FileMetaData | _BadFile:
    """The footer of one file, or why it is not a Parquet file.

    The bytes are fetched first (with retries: I/O errors may be transient) and parsed from
    memory afterwards, so a garbage footer is never mistaken for a flaky connection.
    """
    size = info.size
    if size is None or size < 12:  # "PAR1" + footer + 4-byte footer length + "PAR1"
        return _BadFile(f"not a Parquet file ({size} bytes)")

    def read_tail() -> tuple[bytes, bytes]:
        with fs.open_input_file(info.path) as f:
            tail = f.read_at(min(size, _FOOTER_READ), size - min(size, _FOOTER_READ))
            footer_len = int.from_bytes(tail[-8:-4], "little")
            if tail[-4:] == b"PAR1" and len(tail) < footer_len + 8 <= size - 4:
                tail = f.read_at(footer_len + 8, size - footer_len - 8)
            head = f.read_at(4, 0) if tail[-4:] != b"PAR1" else b"PAR1"
            return head, tail

    head, tail = storage.with_retries(read_tail, what=f"reading the footer of {uri}")
    if head != b"PAR1":
        return _BadFile("not a Parquet file (no PAR1 magic bytes)")
    if tail[-4:] != b"PAR1":
        return _BadFile("corrupted footer (no PAR1 magic at the end: truncated upload?)")
    footer_len = int.from_bytes(tail[-8:-4], "little")
    if footer_len + 8 > len(tail):
        return _BadFile(f"corrupted footer (footer length {footer_len} > file size {size})")
    try:
        footer = pq.read_metadata(pa.BufferReader(tail[-(footer_len + 8):]))
    except (pa.ArrowException, OSError, ValueError) as exc:
        return _BadFile(f"corrupted footer ({exc})")
    lie = _footer_lie(footer, data_end=size - footer_len - 8)
    return _BadFile(f"inconsistent footer: {lie}") if lie else footer


def _footer_lie(footer: pq.FileMetaData, data_end: int) -> str | None:
    """How a footer that parses contradicts its own file, or None when it does not.

    Every column chunk must lie within the data (between the leading magic and the footer,
    ``data_end``), every count must be >= 0, the row groups must add up to the file's row
    count, and a column that is not repeated must hold one value per row of its row group.
    Arithmetic on the footer alone: no data page is read. A footer that passes can still lie
    inside a column chunk; :func:`iter_shard` checks the rows each row group really yields.
    """
    if footer.num_rows < 0:
        return f"the file claims {footer.num_rows} rows"
    flat = [footer.schema.column(c).max_repetition_level == 0 for c in range(footer.num_columns)]
    total = 0
    for rg in range(footer.num_row_groups):
        group = footer.row_group(rg)
        n = group.num_rows
        if n < 0:
            return f"row group {rg} claims {n} rows"
        total += n
        for c in range(group.num_columns):
            chunk = group.column(c)
            where = f"row group {rg}, column {chunk.path_in_schema!r}"
            if chunk.file_path:
                return f"{where} is stored in another file ({chunk.file_path})"
            # A chunk starts at its dictionary page, if any, else at its first data page; an
            # empty chunk may have only a dictionary page (data_page_offset 0).
            offsets = [o for o in (chunk.data_page_offset, chunk.dictionary_page_offset
                                   if chunk.has_dictionary_page else None) if o]
            start = min(offsets, default=4)
            size = chunk.total_compressed_size
            if (size < 0 or start < 4 or start + size > data_end
                    or any(o >= start + size for o in offsets)):
                return (f"{where} claims bytes {start:,} to {start + size:,} (pages at "
                        f"{', '.join(f'{o:,}' for o in offsets)}) but the data lies between "
                        f"bytes 4 and {data_end:,} (a truncated copy?)")
            if c < len(flat) and flat[c] and chunk.num_values != n:
                return f"{where} holds {chunk.num_values:,} values for {n:,} rows"
    if total != footer.num_rows:
        return f"its row groups hold {total:,} rows but it claims {footer.num_rows:,}"
    return None


def _unwrap(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_binary(t: pa.DataType) -> bool:
    t = _unwrap(t)
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_string(t: pa.DataType) -> bool:
    t = _unwrap(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_hf(t: pa.DataType) -> bool:
    if not pa.types.is_struct(t):
        return False
    names = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
    return ("bytes" in names and _is_binary(names["bytes"])
            and "path" in names and _is_string(names["path"]))


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(_unwrap(t))


_EXPECTED_IMAGE = "binary, struct<bytes: binary, path: string> or a string path/URI"


def _detect(schema: pa.Schema, image_column: str | None, id_column: str | None,
            label_column: str | None, *, where: str) -> _Columns:
    """The columns a plan reads, from the first readable file ``where``; a named column it
    lacks raises :class:`InvalidInput` (:func:`_no_column`), any other problem ``_BadFile``."""
    names = schema.names
    if image_column is not None:
        if image_column not in names:
            raise _no_column("--image-column", image_column, where, names)
        t = schema.field(image_column).type
        if _is_binary(t):
            layout = ImageLayout.BYTES
        elif _is_hf(t):
            layout = ImageLayout.HF_STRUCT
        elif _is_string(t):
            layout = ImageLayout.PATH
        else:
            raise _BadFile(f"column {image_column!r} is {t}; expected {_EXPECTED_IMAGE}")
        image = image_column
    else:
        candidates = [f.name for f in schema if _is_binary(f.type) or _is_hf(f.type)]
        preferred = [n for n in IMAGE_NAMES if n in candidates]
        paths = [n for n in PATH_NAMES if n in names and _is_string(schema.field(n).type)]
        if preferred:
            image = preferred[0]
        elif len(candidates) == 1:
            image = candidates[0]
        elif len(candidates) > 1:
            raise _BadFile(f"has several image-like columns ({', '.join(candidates)}); "
                           "pass --image-column to choose one")
        elif paths:
            image = paths[0]
        else:
            raise _BadFile(
                "has no image column: expected a binary column, a struct<bytes: binary, "
                f"path: string> or a path column named one of {', '.join(PATH_NAMES)} "
                f"(columns: {', '.join(f'{f.name}: {f.type}' for f in schema)}); "
                "pass --image-column to name it"
            )
        t = schema.field(image).type
        layout = (ImageLayout.HF_STRUCT if _is_hf(t) else
                  ImageLayout.PATH if _is_string(t) else ImageLayout.BYTES)
    if (layout is ImageLayout.BYTES and image == "content" and "path" in names
            and _is_string(schema.field("path").type)):
        layout = ImageLayout.SPARK

    if id_column is not None:
        if id_column not in names:
            raise _no_column("--id-column", id_column, where, names)
        t = schema.field(id_column).type
        if not (_is_string(t) or _is_int(t)):
            raise _BadFile(f"id column {id_column!r} is {t}; expected a string or integer")
        ident: str | None = id_column
    else:
        ident = next((n for n in ID_NAMES if n in names
                      and (_is_string(schema.field(n).type) or _is_int(schema.field(n).type))),
                     None)

    if label_column is not None:
        if label_column not in names:
            raise _no_column("--label-column", label_column, where, names)
        t = schema.field(label_column).type
        if not _is_int(t):
            raise _BadFile(f"label column {label_column!r} is {t}; expected an integer "
                           "class index")
        label: str | None = label_column
    else:
        label = LABEL_NAME if (LABEL_NAME in names
                               and _is_int(schema.field(LABEL_NAME).type)) else None
    used = dict.fromkeys(c for c in (image, ident, label) if c is not None)
    kinds = tuple((c, _kind(schema.field(c).type)) for c in used)
    return _Columns(image, layout, ident, label, kinds)


def _kind(t: pa.DataType) -> str:
    if _is_binary(t):
        return "binary"
    if _is_string(t):
        return "string"
    if _is_int(t):
        return "integer"
    if _is_hf(t):
        return "struct<bytes, path>"
    return str(t)


def _check_same(schema: pa.Schema, cols: _Columns, reference: str) -> None:
    """The columns the plan reads must exist here with the same kind of type (kept columns:
    the same type)."""
    for name, expected in cols.keep:
        if name not in schema.names:
            raise _BadFile(f"schema differs from {reference}: it has no column {name!r} "
                           "(in keep_columns)")
        if str(schema.field(name).type) != expected:
            raise _BadFile(f"schema differs from {reference}: kept column {name!r} is "
                           f"{schema.field(name).type} here, {expected} there")
    for name, expected in cols.kinds:
        if name not in schema.names:
            raise _BadFile(f"schema differs from {reference}: it has no column {name!r}")
        t = schema.field(name).type
        if _kind(t) != expected:
            raise _BadFile(f"schema differs from {reference}: column {name!r} is {t} here, "
                           f"{expected} there")


def iter_shard(plan: CorpusPlan, shard: Shard, *, batch_rows: int = 256) -> Iterator[dict]:
    """Stream one shard in batches, reading only its row groups and the needed columns.

    Yields dicts with ``"id"`` (list of str), ``"image"`` (list of bytes or None),
    ``"error"`` (list of None or ``"reason: detail"``), ``"row"`` (int64 array, row index
    within the file) and, when ``plan.label_column`` is set, ``"label"`` (int64, null -> -1).

    Row groups are read one at a time. A row group that cannot be read, or that yields
    another number of rows than its footer claims (a footer that lies in a way
    :func:`plan_corpus` cannot see), raises :class:`~ironsight.cluster.errors.JobFailed` naming the file
    and row group; rows already yielded are lost with the shard, which is never committed.

    >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
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
    source = storage.with_retries(lambda: loc.fs.open_input_file(loc.path),
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
            fresh = storage.with_retries(lambda: loc.fs.open_input_file(loc.path),
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
                if reopen is None or not _network_error(exc) or failures >= storage.max_attempts():
                    tries = f" (after {failures} attempts)" if failures > 1 else ""
                    raise JobFailed(f"reading {shard.file} row group {rg} failed{tries}: {why}") from exc
                log.debug("reading %s row group %d: %s; reopening (attempt %d of %d)",
                          shard.file, rg, why, failures + 1, storage.max_attempts())
                storage.backoff_sleep(failures)
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
    return network and storage.is_transient(exc)


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
