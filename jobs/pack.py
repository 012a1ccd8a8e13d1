"""``ironsight pack DIR OUT.parquet``: a folder of images into one Parquet file.

The folder is read exactly as ``ironsight classify DIR`` reads it (:mod:`ironsight.cluster.reader`,
layout ``files``): the JPEG/PNG/WebP files under DIR, recursively, sorted by path, each through
the same regular-file and 256 MiB checks. So ``classify OUT.parquet`` gives every row the same
id as ``classify DIR``.

| column       | type   | holds                                                          |
|--------------|--------|----------------------------------------------------------------|
| ``id``       | string | the file's path relative to DIR, POSIX separators (``cats/1.jpg``) |
| ``image``    | binary | the file's bytes, unchanged (never re-encoded)                 |
| ``label``    | int64  | with ``--label-from-folder``: the index of the file's top-level folder among DIR's class folders, sorted by name (torchvision ``ImageFolder``'s order) |
| ``label_name`` | string | with ``--label-from-folder``: that folder's name              |

The file is written as it is read, one row group of at most ``--rows-per-group`` images at a
time, so memory holds one row group, not the folder. It goes to a temp file beside OUT that is
renamed into place at the end: a failed or interrupted pack leaves no half-written OUT.

| situation                                                   | what pack does                    | exit |
|-------------------------------------------------------------|-----------------------------------|------|
| OUT exists                                                  | refused unless ``--overwrite`` (a folder never) | 2 |
| OUT lies inside DIR                                          | refused (the next classify of DIR would find it) | 2 |
| DIR holds Parquet files, or no image file                    | refused, as classify refuses it   | 2 |
| a file cannot be read (not a regular file, over 256 MiB, EIO) | refused naming it; OUT is not written | 2 |
| ``--label-from-folder`` and an image lies directly in DIR    | refused naming it                 | 2 |

DIR may be a local folder or an ``s3://`` prefix; OUT is a local file.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ironsight.cluster import corpus, paths, reader, storage
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.footer import ImageLayout

DEFAULT_ROWS_PER_GROUP = 256


def pack_folder(folder: str, out: str, *, label_from_folder: bool = False,
                rows_per_group: int = DEFAULT_ROWS_PER_GROUP, overwrite: bool = False,
                allowed_roots: tuple[str, ...] = ()) -> int:
    """Write the images under ``folder`` into the Parquet file ``out``; returns the row count.

    Raises:
        InvalidInput: see the module table; nothing is left at ``out``.
    """
    if rows_per_group < 1:
        raise InvalidInput(f"--rows-per-group must be at least 1, got {rows_per_group}")
    if out.startswith("s3://") or "://" in out:
        raise InvalidInput(f"OUT {out}: pack writes a local file; copy it to object storage after")
    target = os.path.abspath(out)
    if outside := paths.check_within(target, allowed_roots):
        raise InvalidInput(f"OUT: {outside}")
    if not folder.startswith("s3://"):
        base = os.path.realpath(folder)
        if os.path.realpath(target) == base or os.path.realpath(target).startswith(base.rstrip("/") + "/"):
            raise InvalidInput(f"OUT {out} lies inside DIR {folder}: the next classify or pack of "
                               "DIR would find it among the images; write it outside DIR")
    if os.path.isdir(target):
        raise InvalidInput(f"OUT {out} is a folder; pack writes one Parquet file")
    if os.path.lexists(target) and not overwrite:
        raise InvalidInput(f"OUT {out} exists; pass --overwrite to replace it")
    plan = corpus.plan_corpus(folder, max_rows_per_shard=rows_per_group,
                              allowed_roots=allowed_roots)
    if plan.layout is not ImageLayout.FILES:
        raise InvalidInput(f"DIR {folder} is a Parquet corpus, not a folder of images; "
                           "classify it as it is")
    classes: dict[str, int] = {}
    if label_from_folder:
        loose = [n for n in plan.file_names if "/" not in n]
        if loose:
            raise InvalidInput(f"--label-from-folder: {loose[0]} lies directly in {folder}, not "
                               "in a class folder (DIR/CLASS/IMAGE)"
                               + (f", and {len(loose) - 1} more" if len(loose) > 1 else ""))
        names = sorted({n.split("/", 1)[0] for n in plan.file_names})
        classes = {name: i for i, name in enumerate(names)}
    fields = [("id", pa.string()), ("image", pa.binary())]
    if label_from_folder:
        fields += [("label", pa.int64()), ("label_name", pa.string())]
    schema = pa.schema(fields)
    rows = 0
    try:
        with (storage.publishing(storage.resolve(target)) as f,
              pq.ParquetWriter(f, schema, compression="none") as writer):
            for shard in plan.shards:
                for batch in reader.iter_shard(plan, shard, batch_rows=rows_per_group):
                    bad = [(i, e) for i, e in zip(batch["id"], batch["error"], strict=True) if e]
                    if bad:
                        raise InvalidInput(f"cannot pack {folder}: {bad[0][0]}: {bad[0][1]}"
                                           + (f" (and {len(bad) - 1} more in this batch)"
                                              if len(bad) > 1 else ""))
                    cols: dict[str, Any] = {"id": batch["id"], "image": batch["image"]}
                    if label_from_folder:
                        tops = [i.split("/", 1)[0] for i in batch["id"]]
                        cols["label"] = [classes[t] for t in tops]
                        cols["label_name"] = tops
                    writer.write_table(pa.table(cols, schema=schema))
                    rows += len(batch["id"])
    except OSError as exc:
        raise InvalidInput(f"cannot write OUT {out}: {exc.strerror or exc}") from None
    return rows


def add_commands(subparsers: Any, formatter: Any) -> None:
    """Add `ironsight pack`."""
    p = subparsers.add_parser(
        "pack",
        help="pack a folder of JPEG/PNG/WebP images into one Parquet file (id, image[, label])",
        description="Write the images under DIR (recursively, sorted by path) into OUT.parquet: "
        "id (the path relative to DIR), image (the file's bytes), and with --label-from-folder "
        "label/label_name from each image's class folder (DIR/CLASS/...). `ironsight classify "
        "OUT.parquet` then gives the same ids as `ironsight classify DIR`.",
        epilog="examples:\n  ironsight pack photos/ photos.parquet\n"
        "  ironsight pack eval-images/ eval.parquet --label-from-folder",
        formatter_class=formatter,
    )
    p.add_argument("folder", metavar="DIR", help="folder (or s3:// prefix) of image files")
    p.add_argument("out", metavar="OUT.parquet", help="the Parquet file to write (local)")
    p.add_argument("--label-from-folder", action="store_true",
                   help="add label (class index, folders in sorted order) and label_name from "
                   "each image's top-level folder under DIR")
    p.add_argument("--rows-per-group", type=int, default=DEFAULT_ROWS_PER_GROUP, metavar="N",
                   help=f"images per Parquet row group; memory holds one (default: "
                   f"{DEFAULT_ROWS_PER_GROUP})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    rows = pack_folder(args.folder, args.out, label_from_folder=args.label_from_folder,
                       rows_per_group=args.rows_per_group, overwrite=args.overwrite,
                       allowed_roots=paths.operator_roots())
    print(f"packed {rows} images from {args.folder} into {args.out}")
    return 0
