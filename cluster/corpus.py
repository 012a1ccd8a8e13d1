"""Input corpora: plan Parquet files (or a folder of images) into deterministic shards.

Planning reads only Parquet footers (never a data page: :mod:`ironsight.cluster.footer`
checks each one and picks the columns) and cuts every file into shards of consecutive row
groups, at most ``max_rows_per_shard`` rows each (a single larger row group is a shard of its
own). The same files give the same shards, so a rerun sees the same shard ids.
:class:`CorpusPlan` and :class:`Shard` hold only strings and numbers: they are shipped to Ray
tasks, where :func:`ironsight.cluster.reader.iter_shard` streams one shard.

The image column can be laid out four ways, auto-detected when not given
(:class:`~ironsight.cluster.footer.ImageLayout`: ``bytes``, ``hf``, ``spark``, ``path``;
the table is in :mod:`ironsight.cluster.footer`). Images named by path are fetched when the
shard is read (:mod:`ironsight.cluster.reader`, which also lists the error each unreadable
path gives its row). With allowed roots (``plan_corpus(allowed_roots=...)``, see
:mod:`ironsight.cluster.paths`) the input and every planned file must lie inside one.

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
file. :func:`ironsight.cluster.reader.read_kept` reads them for one shard, in the driver, when
the shard is committed.

Ids: the given ``id_column``, else the first of ``id``/``key``/``path`` that is a string or
integer column (integers become strings), else ``"{file relative to INPUT}#{row}"``; a null
id falls back to that derived id. Labels (for audits): the given ``label_column`` or
``label`` when it is an integer column; a null label is -1.

Bad files, detected before any work starts: a file that is not a Parquet file, has a
corrupted or inconsistent footer (:mod:`ironsight.cluster.footer`), has 0 rows, has no usable
image column, or whose columns disagree with the first good file (in sorted order). Every
file under an input directory counts: keep images referenced by path outside it. All bad
files are reported together in one :class:`~ironsight.cluster.errors.InvalidInput`, or, with
``skip_bad_files``, listed in ``CorpusPlan.skipped`` and left out of the plan.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ironsight.cluster import paths, storage
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.footer import (
    KEEP_ALL,
    BadFile,
    Columns,
    ImageLayout,
    check_same,
    detect_columns,
    read_footers,
    with_kept,
)

_MAX_LISTED_PROBLEMS = 20
# An image folder's files, by extension (compared lower-cased).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


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
    footers = read_footers(loc, infos, uris)

    problems: list[tuple[str, str]] = []
    good: list[tuple[int, pq.FileMetaData]] = []
    columns: Columns | None = None
    reference = ""
    for k, (file_uri, footer) in enumerate(zip(uris, footers, strict=True)):
        try:
            if isinstance(footer, BadFile):
                raise footer
            if outside := paths.check_within(file_uri, roots):
                raise BadFile(outside)
            if footer.num_rows == 0:
                raise BadFile("has 0 rows")
            schema = footer.schema.to_arrow_schema()
            if columns is None:
                columns = detect_columns(schema, image_column, id_column, label_column, where=file_uri)
                columns = with_kept(columns, schema, keep_columns, file_uri)
                reference = file_uri
            else:
                check_same(schema, columns, reference)
        except BadFile as exc:
            problems.append((file_uri, str(exc)))
            continue
        good.append((k, footer))

    if problems and not skip_bad_files:
        raise _bad_files(problems, f"{len(problems)} of {len(uris)} file(s) in {uri!r} cannot "
                         "be read as an image corpus", f"fix or remove them{_skip_advice(can_skip)}")
    if columns is None:
        raise InvalidInput(f"no usable Parquet file in {uri!r}; all were skipped:\n"
                           f"{_listed(problems)}")

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
        raise _bad_files(problems, f"{len(problems)} of {len(infos)} file(s) in the image folder "
                         f"{uri!r} cannot be read", f"remove them{_skip_advice(can_skip)}")
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


def _listed(problems: list[tuple[str, str]]) -> str:
    """``  FILE: reason`` lines for the first :data:`_MAX_LISTED_PROBLEMS` bad files."""
    return "\n".join(f"  {f}: {r}" for f, r in problems[:_MAX_LISTED_PROBLEMS])


def _bad_files(problems: list[tuple[str, str]], headline: str, advice: str) -> InvalidInput:
    """One refusal naming every bad file: ``HEADLINE:``, the first ones listed (with how many
    more), then ``ADVICE``.

    >>> print(_bad_files([(f"/c/{i}.parquet", "has 0 rows") for i in range(22)],
    ...                  "22 of 22 file(s) in '/c' cannot be read", "fix or remove them"))
    ... # doctest: +ELLIPSIS
    22 of 22 file(s) in '/c' cannot be read:
      /c/0.parquet: has 0 rows
    ...
      /c/19.parquet: has 0 rows
      ... and 2 more
    fix or remove them
    """
    more = len(problems) - _MAX_LISTED_PROBLEMS
    return InvalidInput(f"{headline}:\n{_listed(problems)}"
                        + (f"\n  ... and {more} more" if more > 0 else "") + f"\n{advice}")


def _skip_advice(can_skip: bool) -> str:
    """The end of a bad-files refusal. Written with the flag; the CLI rewrites it as the spec
    key for ``run`` (``ironsight.jobs.cli_parser.fit_hints``); a job without the option gets none."""
    return ", or pass --skip-bad-files to leave them out" if can_skip else ""


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
