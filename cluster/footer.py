"""What :func:`~ironsight.cluster.corpus.plan_corpus` learns from a Parquet file's footer alone.

Two checks, both on footers (never a data page): :func:`read_footers` reads each file's footer
and says why a file is not a sound Parquet file, and :func:`detect_columns` picks the image,
id, label (and kept, :func:`with_kept`) columns from the first good file's schema, which
:func:`check_same` then holds every later file to. A file that fails either is a
:class:`BadFile`; a column the job names that the file lacks is the job's mistake
(:class:`~ironsight.cluster.errors.InvalidInput` with a did-you-mean), not a bad file.

The image column can be laid out four ways (:class:`ImageLayout`, auto-detected when not
given):

| layout    | column type                                            | bytes come from          |
|-----------|--------------------------------------------------------|--------------------------|
| ``bytes`` | ``binary`` / ``large_binary``                          | the column               |
| ``hf``    | ``struct<bytes: binary, path: string>`` (HF ``Image``) | ``bytes``, else ``path`` |
| ``spark`` | ``content: binary`` next to ``path: string``           | the column               |
| ``path``  | ``string``: a path or ``s3://`` URI                    | fetched from the path    |

A footer is bad when the file does not start with the ``PAR1`` magic ("not a Parquet file";
so is anything under 12 bytes), when its end magic, footer length or footer does not parse
("corrupted footer": a truncated upload, say), or when it parses but contradicts its file
("inconsistent footer": a column chunk past the end of the data, a negative count, row
groups that do not add up to the file's rows, a flat column with more or fewer values than
its row group has rows).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ironsight.cluster import storage, storage_errors
from ironsight.cluster.errors import InvalidInput, did_you_mean

IMAGE_NAMES = ("image", "img", "bytes", "content")  # preferred when several columns qualify
PATH_NAMES = ("image", "img", "image_path", "image_uri", "filepath", "file_path", "path", "uri")
ID_NAMES = ("id", "key", "path")
LABEL_NAME = "label"
# Footer reads on S3 are latency-bound (a HEAD and one or two ranged GETs per file):
# 16 in flight plan 1,000 files in seconds without hammering the endpoint.
_S3_FOOTER_THREADS = 16
_FOOTER_READ = 64 * 1024  # one ranged read covers most footers (pyarrow's default too)
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
class Columns:
    image: str
    layout: ImageLayout
    id: str | None
    label: str | None
    kinds: tuple[tuple[str, str], ...]  # (column, kind of type) in the reference file
    keep: tuple[tuple[str, str], ...] = ()  # (kept column, exact type) in the reference file


class BadFile(Exception):
    """A reason why one file cannot be part of the corpus."""


def read_footers(loc: storage.Location, infos: list[pafs.FileInfo], uris: list[str]
                 ) -> list[pq.FileMetaData | BadFile]:
    """Each file's footer (``uris``: the files' URIs, parallel to ``infos``, for messages), or
    the :class:`BadFile` saying why it is not a sound Parquet file; S3 footers in parallel."""
    def read(info: pafs.FileInfo, uri: str) -> pq.FileMetaData | BadFile:
        return _read_footer(loc.fs, info, uri)

    if loc.is_s3 and len(infos) > 1:
        with ThreadPoolExecutor(min(_S3_FOOTER_THREADS, len(infos))) as pool:
            return list(pool.map(read, infos, uris))
    return [read(i, u) for i, u in zip(infos, uris, strict=True)]


def _read_footer(fs: pafs.FileSystem, info: pafs.FileInfo, uri: str
                 ) -> pq.FileMetaData | BadFile:
    """The footer of one file, or why it is not a Parquet file.

    The bytes are fetched first (with retries: I/O errors may be transient) and parsed from
    memory afterwards, so a garbage footer is never mistaken for a flaky connection.
    """
    size = info.size
    if size is None or size < 12:  # "PAR1" + footer + 4-byte footer length + "PAR1"
        return BadFile(f"not a Parquet file ({size} bytes)")

    def read_tail() -> tuple[bytes, bytes]:
        with fs.open_input_file(info.path) as f:
            tail = f.read_at(min(size, _FOOTER_READ), size - min(size, _FOOTER_READ))
            footer_len = int.from_bytes(tail[-8:-4], "little")
            if tail[-4:] == b"PAR1" and len(tail) < footer_len + 8 <= size - 4:
                tail = f.read_at(footer_len + 8, size - footer_len - 8)
            head = f.read_at(4, 0) if tail[-4:] != b"PAR1" else b"PAR1"
            return head, tail

    head, tail = storage_errors.with_retries(read_tail, what=f"reading the footer of {uri}")
    if head != b"PAR1":
        return BadFile("not a Parquet file (no PAR1 magic bytes)")
    if tail[-4:] != b"PAR1":
        return BadFile("corrupted footer (no PAR1 magic at the end: truncated upload?)")
    footer_len = int.from_bytes(tail[-8:-4], "little")
    if footer_len + 8 > len(tail):
        return BadFile(f"corrupted footer (footer length {footer_len} > file size {size})")
    try:
        footer = pq.read_metadata(pa.BufferReader(tail[-(footer_len + 8):]))
    except (pa.ArrowException, OSError, ValueError) as exc:
        return BadFile(f"corrupted footer ({exc})")
    lie = _footer_lie(footer, data_end=size - footer_len - 8)
    return BadFile(f"inconsistent footer: {lie}") if lie else footer


def _footer_lie(footer: pq.FileMetaData, data_end: int) -> str | None:
    """How a footer that parses contradicts its own file, or None when it does not.

    Every column chunk must lie within the data (between the leading magic and the footer,
    ``data_end``), every count must be >= 0, the row groups must add up to the file's row
    count, and a column that is not repeated must hold one value per row of its row group.
    Arithmetic on the footer alone: no data page is read. A footer that passes can still lie
    inside a column chunk; :func:`ironsight.cluster.reader.iter_shard` checks the rows each
    row group really yields.
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


def detect_columns(schema: pa.Schema, image_column: str | None, id_column: str | None,
            label_column: str | None, *, where: str) -> Columns:
    """The columns a plan reads, from the first readable file ``where``; a named column it
    lacks raises :class:`InvalidInput` (:func:`_no_column`), any other problem ``BadFile``."""
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
            raise BadFile(f"column {image_column!r} is {t}; expected {_EXPECTED_IMAGE}")
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
            raise BadFile(f"has several image-like columns ({', '.join(candidates)}); "
                           "pass --image-column to choose one")
        elif paths:
            image = paths[0]
        else:
            raise BadFile(
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
            raise BadFile(f"id column {id_column!r} is {t}; expected a string or integer")
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
            raise BadFile(f"label column {label_column!r} is {t}; expected an integer "
                           "class index")
        label: str | None = label_column
    else:
        label = LABEL_NAME if (LABEL_NAME in names
                               and _is_int(schema.field(LABEL_NAME).type)) else None
    used = dict.fromkeys(c for c in (image, ident, label) if c is not None)
    kinds = tuple((c, _kind(schema.field(c).type)) for c in used)
    return Columns(image, layout, ident, label, kinds)


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


def check_same(schema: pa.Schema, cols: Columns, reference: str) -> None:
    """The columns the plan reads must exist here with the same kind of type (kept columns:
    the same type)."""
    for name, expected in cols.keep:
        if name not in schema.names:
            raise BadFile(f"schema differs from {reference}: it has no column {name!r} "
                           "(in keep_columns)")
        if str(schema.field(name).type) != expected:
            raise BadFile(f"schema differs from {reference}: kept column {name!r} is "
                           f"{schema.field(name).type} here, {expected} there")
    for name, expected in cols.kinds:
        if name not in schema.names:
            raise BadFile(f"schema differs from {reference}: it has no column {name!r}")
        t = schema.field(name).type
        if _kind(t) != expected:
            raise BadFile(f"schema differs from {reference}: column {name!r} is {t} here, "
                           f"{expected} there")


def with_kept(cols: Columns, schema: pa.Schema, keep: Sequence[str] | None,
               file_uri: str) -> Columns:
    """``cols`` with the kept columns resolved against the reference file's schema."""
    if not keep:
        return cols
    from ironsight.cluster.output_format import LABELS_SCHEMA  # the output's own columns

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
                f"keep_columns: {file_uri} has no column {n!r}; {did_you_mean(n, names)}"
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


def _no_column(option: str, name: str, where: str, names: Sequence[str]) -> InvalidInput:
    """``--label-column: column 'lable' not in FILE; did you mean 'label'? columns: ...``: a
    column the job names is a wrong option, not a bad file (skipping would skip them all)."""
    return InvalidInput(f"{option}: column {name!r} not in {where}; {did_you_mean(name, names)}"
                        f"columns: {', '.join(names)}")
