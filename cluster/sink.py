"""The exactly-once labels sink: one atomically published Parquet file per input shard.

Layout of ``OUTPUT/``:

| name                          | written                       | content                               |
|-------------------------------|-------------------------------|---------------------------------------|
| ``part-<shard_id>.parquet``   | once per shard, atomically    | the shard's rows, :data:`LABELS_SCHEMA` |
| ``_manifest.json``            | at start, every few seconds, at end | spec hash, model, per-shard rows/errors/sha256 |
| ``_SUCCESS``                  | once, when every shard is committed | the run summary (JSON)          |
| ``_lock.json``                | while a run holds OUTPUT      | owner, host, pid, heartbeat           |

Exactly once: a shard's file appears whole or not at all (:func:`ironsight.cluster.storage.publish_bytes`),
and the set of published part files *is* the commit log. The manifest is an index over it that
may lag by a few seconds; on resume :meth:`LabelSink.open` reconciles it with the files (a part
file missing from the manifest is read back: its footer gives the rows, its bytes the checksum).
Shards whose file exists are skipped; all others are (re)processed, so a row is never lost and
never written twice.

Only OUTPUT's top level is Ironsight's: it is listed without descending
(:func:`ironsight.cluster.storage.list_dir`), sub-folders (a backup, a dated sub-run) are never read,
counted or deleted, and Ironsight deletes or replaces only files it wrote. A top-level
``part-*.parquet`` is judged by its manifest entry or, failing that, by its footer:

| top-level ``part-<id>.parquet``                                   | taken as               | with ``--overwrite`` |
|-------------------------------------------------------------------|------------------------|----------------------|
| listed in a manifest of this spec hash                            | this job's commit      | kept                 |
| footer ``ironsight.spec_hash`` = this job's, ``<id>`` a planned shard | this job's commit (written after the last manifest flush) | kept |
| footer ``ironsight.spec_hash`` of another job (or another corpus's shard) | another job's output: refused | deleted     |
| no ``ironsight.spec_hash`` (not Parquet, or not written by Ironsight) | a user's file: refused | refused too (never deleted) |

``--overwrite`` deletes exactly: those other jobs' part files, ``_manifest.json``, ``_SUCCESS``,
and (as every open does) the temp files a killed publish of Ironsight's own files left at the
top level (``.part-<id>.parquet.tmp-<8 hex>``, ``._manifest.json.tmp-…``, …). Any other file,
and every sub-folder, stays. A write that fails (disk full, read-only filesystem) is a
one-line error naming the file and the OS reason; :meth:`LabelSink.close` after it only logs.

The labels schema, the format version and the footer metadata of every part file are in
:mod:`ironsight.cluster.output_format`; the lock (``_lock.json``) is
:mod:`ironsight.cluster.output_lock`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ironsight.cluster import storage, storage_errors
from ironsight.cluster.errors import InvalidInput, JobFailed
from ironsight.cluster.output_format import (
    FORMAT,
    FORMAT_VERSION,
    FORMAT_VERSION_KEY,
    LABELS_SCHEMA,
    OLDER_FORMATS,
    PREPROCESSING_KEY,
    SPEC_HASH_KEY,
    WORKER_COLUMNS,
    output_schema,
    part_name,
)
from ironsight.cluster.output_lock import LOCK, OutputLock

log = logging.getLogger("ironsight")

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
# Rewriting the manifest on every commit is O(shards^2) bytes for a large job; the part files
# are the commit log, so the manifest only needs to be fresh to within a few seconds.
MANIFEST_FLUSH_S = 5.0


# What publish_bytes names the temp file of each of our own files; nothing else is a stale temp.
_OWN_TEMP = re.compile(r"\.(part-.+\.parquet|_manifest\.json|_SUCCESS|_lock\.json)\.tmp-[0-9a-f]{8}")
_PART = re.compile(r"part-(.+)\.parquet")


@dataclass
class ShardRecord:
    rows: int
    errors: int
    sha256: str
    file: str

    def to_json(self) -> dict:
        return {"rows": self.rows, "errors": self.errors, "sha256": self.sha256, "file": self.file}


@dataclass
class LabelSink:
    """Commits shards into OUTPUT exactly once; see the module docstring for the layout.

    Use :meth:`open` to create one: it takes the output lock, checks the spec hash of an
    existing OUTPUT, and finds the shards that are already committed.
    """

    out: storage.Location
    spec_hash: str
    header: dict[str, Any]
    metadata: dict[bytes, bytes]
    committed: dict[str, ShardRecord] = field(default_factory=dict)
    _lock: OutputLock | None = None
    _last_flush: float = 0.0
    _dirty: bool = False
    # commit() may run on several threads at once (ironsight.cluster.assembly.assemble_shards): the
    # encode and the publish run in parallel, the bookkeeping and the manifest one at a time.
    _guard: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    @classmethod
    def open(
        cls,
        output_uri: str,
        *,
        spec_hash: str,
        header: dict[str, Any],
        expected_shards: Iterable[str],
        overwrite: bool = False,
    ) -> LabelSink:
        """Open OUTPUT for a run with this spec; resume, refuse, or start fresh.

        Args:
            output_uri: local directory or ``s3://`` prefix.
            spec_hash: the job's output identity (``pipeline.output_rows_hash``); an OUTPUT
                written by another identity is refused.
            header: manifest fields describing the run (model, weights hash, input...); its
                ``preprocessing`` also becomes the Parquet metadata key ``ironsight.preprocessing``.
            expected_shards: shard ids of the planned corpus; part files of other shards in
                OUTPUT mean it holds another corpus's labels and are refused like a spec change.
            overwrite: delete the part files, manifest and ``_SUCCESS`` another job wrote here
                instead of refusing; nothing Ironsight did not write is ever deleted.

        Raises:
            InvalidInput: OUTPUT is a file or cannot be created or written (read-only, no
                permission), holds another job's output (and not ``overwrite``) or part files
                Ironsight did not write, or is locked by a live run.
        """
        out = storage.resolve(output_uri)
        _prepare_folder(out)
        try:
            lock = OutputLock.acquire(out)
        except OSError as exc:
            raise InvalidInput(
                f"cannot write to OUTPUT {out.uri}: {storage_errors.os_reason(exc)} (creating {LOCK})"
            ) from None
        try:
            sink = cls._open_locked(out, spec_hash, header, set(expected_shards), overwrite)
        except BaseException:
            lock.release()
            raise
        sink._lock = lock
        return sink

    @classmethod
    def _open_locked(
        cls, out: storage.Location, spec_hash_: str, header: dict, expected: set[str], overwrite: bool
    ) -> LabelSink:
        manifest_loc = out.join(MANIFEST)
        unreadable = False
        try:
            existing = _read_json(manifest_loc)
        except InvalidInput:
            if not overwrite:
                raise
            existing, unreadable = None, True  # not JSON: --overwrite replaces it
        # Every manifest Ironsight wrote names its format version (one without is judged by
        # its spec hash and the part files' footers alone).
        old_format = (existing is not None
                      and existing.get("version", FORMAT_VERSION) != FORMAT_VERSION)
        same = (existing is not None and not old_format
                and existing.get("spec_hash") == spec_hash_)
        listed = existing.get("shards") if same and isinstance(existing.get("shards"), dict) else {}
        ours: dict[str, dict] = {}  # shard id -> manifest record, or None: read it back
        others: list[str] = []  # part files another Ironsight job wrote
        alien: list[str] = []  # part-*.parquet that Ironsight did not write
        for info in storage.list_dir(out):  # the top level only: sub-folders are not ours
            match = _PART.fullmatch(info.base_name)
            if match is None:
                continue
            shard_id, name = match.group(1), info.base_name
            if shard_id in expected and isinstance(listed.get(shard_id), dict):
                ours[shard_id] = listed[shard_id]
                continue
            meta = storage.parquet_metadata(out.join(name))
            if meta is None or SPEC_HASH_KEY not in meta:
                alien.append(name)
            elif (meta[SPEC_HASH_KEY] == spec_hash_.encode() and shard_id in expected
                  and meta.get(FORMAT_VERSION_KEY) == str(FORMAT_VERSION).encode()):
                ours[shard_id] = {}  # committed after the last manifest flush
            else:
                others.append(name)
        if alien:
            raise InvalidInput(
                f"{out.uri} holds {len(alien)} part file(s) that Ironsight did not write "
                f"({', '.join(alien[:3])}: no ironsight.spec_hash in the Parquet footer). Ironsight "
                "never replaces or deletes files it did not write, and its own part files must not "
                "mix with them: move them out of OUTPUT, or choose another OUTPUT."
            )
        stale = existing is not None and not same
        if stale or others or unreadable:
            if not overwrite:
                what = (
                    f"output format version {existing.get('version')} "
                    f"({OLDER_FORMATS.get(existing.get('version'), 'another layout')}), and this "
                    f"Ironsight writes version {FORMAT_VERSION}"
                    if stale and old_format
                    else f"spec hash {existing.get('spec_hash')} (model {existing.get('model', {}).get('name')!r}, "
                    f"input {existing.get('input')!r})"
                    if stale
                    else f"part files of another job or of shards this input does not have "
                    f"({', '.join(others[:3])})"
                )
                raise InvalidInput(
                    f"{out.uri} already holds the output of a different job: {what}; this job has "
                    f"spec hash {spec_hash_}. Choose another OUTPUT, or pass --overwrite to replace it."
                )
            # _SUCCESS first, so a half-replaced OUTPUT never looks complete; the manifest
            # next: the remaining parts still name their job in their footers.
            for name in (SUCCESS, MANIFEST, *others):
                storage.delete(out.join(name))
            log.info("--overwrite: removed %d part files of another job from %s", len(others), out.uri)
            existing = None
        _remove_stale_temps(out)
        metadata = {
            SPEC_HASH_KEY: spec_hash_.encode(),
            FORMAT_VERSION_KEY: str(FORMAT_VERSION).encode(),
            b"ironsight.header": json.dumps(header, sort_keys=True, default=str).encode(),
        }
        if header.get("preprocessing") is not None:
            metadata[PREPROCESSING_KEY] = json.dumps(header["preprocessing"], sort_keys=True).encode()
        sink = cls(out=out, spec_hash=spec_hash_, header=header, metadata=metadata)
        for shard_id, rec in sorted(ours.items()):
            name = part_name(shard_id)
            try:
                record = ShardRecord(int(rec["rows"]), int(rec["errors"]), str(rec["sha256"]), name)
            except (KeyError, TypeError, ValueError):  # not in the manifest: read it back
                data = storage.read_bytes(out.join(name))
                table = pq.read_table(io.BytesIO(data), columns=["error"])
                record = ShardRecord(
                    rows=table.num_rows,
                    errors=table.num_rows - table.column("error").null_count,
                    sha256=hashlib.sha256(data).hexdigest(),
                    file=name,
                )
            sink.committed[shard_id] = record
        sink.flush_manifest(force=True)
        return sink

    @property
    def is_complete(self) -> bool:
        return storage.exists(self.out.join(SUCCESS))

    def commit(self, shard_id: str, table: pa.Table) -> ShardRecord:
        """Publish one shard's rows atomically; a shard is committed at most once per OUTPUT.

        ``table`` holds the :data:`LABELS_SCHEMA` columns, then any kept input columns
        (:func:`output_schema`), which keep their types. ``pred_worker`` and ``decode_worker``
        may be left out: they are then null (where the rows were processed is unknown).
        """
        if shard_id in self.committed:
            raise AssertionError(f"shard {shard_id} committed twice")  # a bug, never user input
        for name in WORKER_COLUMNS:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
        kept = pa.schema([f for f in table.schema if f.name not in LABELS_SCHEMA.names])
        schema = output_schema(kept)
        table = table.select(schema.names).cast(schema).replace_schema_metadata(
            {**self.metadata, b"ironsight.shard_id": shard_id.encode()}
        )
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        name = part_name(shard_id)
        try:
            storage.publish_bytes(self.out.join(name), data)
        except OSError as exc:
            raise JobFailed(
                f"could not commit shard {shard_id}: writing {self.out.join(name).uri} failed: "
                f"{storage_errors.os_reason(exc)}. The shards committed before it ({len(self.committed)}) "
                "stay; fix OUTPUT and rerun the same command to resume."
            ) from exc
        rec = ShardRecord(
            rows=table.num_rows,
            errors=table.num_rows - table.column("error").null_count,
            sha256=hashlib.sha256(data).hexdigest(),
            file=name,
        )
        with self._guard:
            self.committed[shard_id] = rec
            self._dirty = True
            self.flush_manifest()
        return rec

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "spec_hash": self.spec_hash,
            **self.header,
            "committed_shards": len(self.committed),
            "committed_rows": sum(r.rows for r in self.committed.values()),
            "shards": {k: v.to_json() for k, v in sorted(self.committed.items())},
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def flush_manifest(self, force: bool = False) -> None:
        with self._guard:
            now = time.monotonic()
            if force or (self._dirty and now - self._last_flush >= MANIFEST_FLUSH_S):
                _write_json(self.out.join(MANIFEST), self.manifest())
                self._last_flush, self._dirty = now, False

    def finish(self, summary: dict[str, Any]) -> None:
        """Flush the manifest and write ``_SUCCESS``: call only when every shard is committed.

        ``_SUCCESS`` holds ``summary`` plus ``committed_shards`` and ``committed_rows``: what
        OUTPUT's part files hold in all, this run's and earlier runs' commits together.
        """
        self.flush_manifest(force=True)
        committed = {
            "committed_shards": len(self.committed),
            "committed_rows": sum(r.rows for r in self.committed.values()),
        }
        _write_json(self.out.join(SUCCESS), {**summary, **committed})

    def close(self) -> None:
        """Flush what is committed and release the lock (also after a failure)."""
        try:
            if self._dirty:
                self.flush_manifest(force=True)
        except (JobFailed, OSError) as exc:
            # The part files are the commit log and the next open() reconciles the manifest
            # with them; raising here would hide the error that stopped the run (a full disk
            # fails the commit, then this flush, the same way).
            log.warning("could not flush %s: %s", self.out.join(MANIFEST).uri, exc)
        finally:
            if self._lock is not None:
                lock, self._lock = self._lock, None
                try:
                    lock.release()
                except JobFailed as exc:
                    # Storage went away after the last commit: what is committed (and _SUCCESS,
                    # if written) stands; the lock's heartbeat has stopped, so it expires.
                    log.warning("could not remove the lock %s: %s", lock.loc.uri, exc)


def _read_json(loc: storage.Location) -> dict | None:
    if not storage.exists(loc):
        return None
    try:
        obj = json.loads(storage.read_bytes(loc))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{loc.uri} is not valid JSON ({exc}); remove it or pass --overwrite") from exc
    if not isinstance(obj, dict):
        raise InvalidInput(f"{loc.uri} is not an Ironsight manifest (not a JSON object); remove it or pass --overwrite")
    return obj


def _write_json(loc: storage.Location, obj: Any) -> None:
    try:
        storage.publish_bytes(loc, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise JobFailed(f"writing {loc.uri} failed: {storage_errors.os_reason(exc)}") from exc


def _prepare_folder(out: storage.Location) -> None:
    """Create a local OUTPUT folder, or say in one line why it cannot be one."""
    if out.is_s3:
        return
    if os.path.exists(out.path) and not os.path.isdir(out.path):
        raise InvalidInput(
            f"OUTPUT {out.uri} is a file, not a folder: Ironsight writes one Parquet file per "
            "shard into a folder; choose a folder (a new one is created)"
        )
    try:
        storage.makedirs(out)
    except OSError as exc:
        raise InvalidInput(f"cannot create OUTPUT {out.uri}: {storage_errors.os_reason(exc)}") from None


def _remove_stale_temps(out: storage.Location) -> None:
    """Delete the temp files of our own files that a killed local publish left at the top level.

    Only names :func:`ironsight.cluster.storage.publish_bytes` gives them (``.part-<id>.parquet.tmp-<8
    hex>``, ``._manifest.json.tmp-…``, ``._SUCCESS.tmp-…``, ``._lock.json.tmp-…``); a user's
    other dot-files and every sub-folder are left alone.
    """
    if out.is_s3 or not os.path.isdir(out.path):
        return
    for name in os.listdir(out.path):
        path = os.path.join(out.path, name)
        if _OWN_TEMP.fullmatch(name) and os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
