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

Labels schema (:data:`LABELS_SCHEMA`, output format version :data:`FORMAT_VERSION` = 3):

| column             | type                  | meaning                                            |
|--------------------|-----------------------|----------------------------------------------------|
| ``id``             | string                | the input row's id (given or derived ``file#row``, or an image file's path relative to INPUT) |
| ``pred_label``     | int64, null on error  | top-1 class index                                  |
| ``pred_label_name``| string, null on error | top-1 class name                                   |
| ``pred_score``     | float32, null on error | top-1 softmax probability                         |
| ``pred_topk_labels`` | list<int64>         | top-k class indices, best first                    |
| ``pred_topk_scores`` | list<float32>       | their softmax probabilities                        |
| ``error``          | string                | null when fine, else ``reason: detail``            |
| ``pred_worker``    | string                | the predictor actor: ``<node>/<pid>/<gpu ids or ->``, ``<node>`` the first 8 hex digits of its Ray node id |
| ``decode_worker``  | string                | the decode task's ``<node>/<pid>`` (same node ids)  |
| (kept columns)     | as in the input       | ``--keep-columns`` copies input columns here, after ``decode_worker`` |

Version 1 named the prediction columns ``label``, ``label_name``, ``score``, ``topk_labels``
and ``topk_scores``, which collided with a corpus's own ground-truth ``label``; version 2
prefixes them with ``pred_`` (``id`` and ``error`` describe the row, not the prediction, and
keep their names). Version 3 adds ``pred_worker`` and ``decode_worker`` (which node, process
and GPU predicted and decoded each row; the same row may be processed twice after a
failure, and the row kept names the attempt that was written). Readers that select columns
by name read versions 2 and 3 alike. An input column kept under one of these names is refused before Ray
starts. An OUTPUT written by another format version is another job's output: its manifest
(``version``) and its part files (footer ``ironsight.format_version``, absent in version 1)
do not match, so it is refused, or replaced with ``--overwrite``; the two are never mixed.

Schema metadata of every part file:

| key                        | value                                                        |
|----------------------------|--------------------------------------------------------------|
| ``ironsight.spec_hash``    | the job's output identity (``ironsight.cluster.pipeline.output_rows_hash``, made with :func:`stable_hash`): who wrote this file |
| ``ironsight.header``       | JSON: input, model name and weights sha256, top-k, versions  |
| ``ironsight.preprocessing``| JSON: the model's resolved preprocessing (mode, resize, crop, interpolation, mean, std, weights_version), when the header has it |
| ``ironsight.shard_id``     | the input shard this file labels                             |
| ``ironsight.format_version`` | :data:`FORMAT_VERSION` (from version 2 on)                 |
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ironsight.cluster import storage, storage_errors
from ironsight.cluster.errors import InvalidInput, JobFailed
from ironsight.cluster.liveness import process_exists, process_identity

LABELS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("pred_label", pa.int64()),
        ("pred_label_name", pa.string()),
        ("pred_score", pa.float32()),
        ("pred_topk_labels", pa.list_(pa.int64())),
        ("pred_topk_scores", pa.list_(pa.float32())),
        ("error", pa.string()),
        ("pred_worker", pa.string()),
        ("decode_worker", pa.string()),
    ]
)
# Where each row was predicted and decoded (format version 3 on); null when unknown.
WORKER_COLUMNS = ("pred_worker", "decode_worker")
log = logging.getLogger("ironsight")

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
LOCK = "_lock.json"
FORMAT = "ironsight-labels"
# 2: prediction columns prefixed pred_ (1: label, label_name, score, topk_labels, topk_scores),
# kept input columns after error. 3: pred_worker and decode_worker after error (kept columns
# after them). An OUTPUT of another version is another job's output.
FORMAT_VERSION = 3
# What an OUTPUT of an older version lacks, for the refusal's message.
_OLDER_FORMATS = {
    1: "columns label, score, topk_labels, ... (now pred_label, pred_score, pred_topk_labels, ...)",
    2: "no pred_worker and decode_worker columns",
}
FORMAT_VERSION_KEY = b"ironsight.format_version"
# A lock whose heartbeat is older than this belongs to a dead run and may be taken over:
# long enough to survive a stalled driver or a slow object store, short enough that a crashed
# run blocks its successor for at most two minutes.
LOCK_STALE_AFTER_S = 120.0
LOCK_HEARTBEAT_S = 15.0
# Rewriting the manifest on every commit is O(shards^2) bytes for a large job; the part files
# are the commit log, so the manifest only needs to be fresh to within a few seconds.
MANIFEST_FLUSH_S = 5.0


# What publish_bytes names the temp file of each of our own files; nothing else is a stale temp.
_OWN_TEMP = re.compile(r"\.(part-.+\.parquet|_manifest\.json|_SUCCESS|_lock\.json)\.tmp-[0-9a-f]{8}")
_PART = re.compile(r"part-(.+)\.parquet")
SPEC_HASH_KEY = b"ironsight.spec_hash"
# JSON of the model's resolved preprocessing (ironsight.cluster.preprocess.Preprocess.to_dict)
PREPROCESSING_KEY = b"ironsight.preprocessing"


def output_schema(kept: pa.Schema | None = None) -> pa.Schema:
    """:data:`LABELS_SCHEMA` followed by the kept input columns' fields (types as in the input).

    Raises:
        InvalidInput: a kept column has the name of an output column.

    >>> output_schema(pa.schema([("path", pa.string())])).names[-2:]
    ['decode_worker', 'path']
    """
    fields = list(kept or ())
    clash = [f.name for f in fields if f.name in LABELS_SCHEMA.names]
    if clash:
        raise InvalidInput(
            f"cannot keep input column(s) {', '.join(map(repr, clash))}: the output already has "
            f"a column of that name (output columns: {', '.join(LABELS_SCHEMA.names)})"
        )
    return pa.schema(list(LABELS_SCHEMA) + fields)


def part_name(shard_id: str) -> str:
    return f"part-{shard_id}.parquet"


def stable_hash(fields: dict[str, Any]) -> str:
    """16 hex digits of sha256 over ``fields`` as canonical JSON (keys sorted): the same
    fields always give the same hash, in any order.

    The one hash behind both job identities, which hash different fields:
    ``ironsight.cluster.pipeline.output_rows_hash`` (what decides the output rows: the
    OUTPUT's owner, ``ironsight.spec_hash`` in footers and manifest) and
    ``ironsight.jobs.submit.validated_spec_hash`` (every field of a validated spec: submission
    ids and the history's ``spec_hash`` column).

    >>> stable_hash({"model": "resnet18", "top_k": 5}) == stable_hash({"top_k": 5, "model": "resnet18"})
    True
    """
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
    # commit() may run on several threads at once (ironsight.cluster.pipeline._assemble): the
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
                    f"({_OLDER_FORMATS.get(existing.get('version'), 'another layout')}), and this "
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


# Owners of the locks that live OutputLock objects of this process hold (acquired, not yet
# released). A lock file naming this host and this pid but an owner missing here was left by
# an earlier run in this process whose release() could not delete it (storage was down).
_LIVE_OWNERS: set[str] = set()
_LIVE_OWNERS_GUARD = threading.Lock()


@dataclass
class OutputLock:
    """One run at a time per OUTPUT: a lock file with a heartbeat that a crash cannot wedge.

    A lock is taken over when its heartbeat is older than :data:`LOCK_STALE_AFTER_S`, when
    its owner ran on this host and that process no longer exists, or when its owner is this
    very process but no live :class:`OutputLock` here holds it (an earlier run in this process
    released it while the storage was unreachable, so the file stayed behind). The lock names
    its process by pid and identity (``process_start``, :mod:`ironsight.cluster.liveness`): a
    pid now given to another process, or a lock from before a reboot, counts as gone; a lock
    from another pid namespace on the same host name (a container) cannot be checked from here
    and waits for its heartbeat to expire. Locally the file is created with ``O_EXCL`` so two
    racing runs cannot both win; on S3 (no conditional PUT through pyarrow) the lock is written
    and read back, which narrows but does not close the race.
    """

    loc: storage.Location
    owner: str
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, out: storage.Location) -> OutputLock:
        loc = out.join(LOCK)
        owner = uuid.uuid4().hex
        body = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                "process_start": process_identity(os.getpid())}
        current = _read_lock(loc)
        if current is not None and not _lock_is_stale(current):
            age = time.time() - float(current.get("heartbeat", 0))
            raise InvalidInput(
                f"{out.uri} is in use by another run (pid {current.get('pid')} on "
                f"{current.get('host')}, heartbeat {age:.0f}s ago). Wait for it to finish, or "
                f"choose another OUTPUT; a crashed run's lock expires after {LOCK_STALE_AFTER_S:.0f}s."
            )
        if current is not None:
            storage.delete(loc)
        if not _create_exclusive(loc, {**body, "heartbeat": time.time()}):
            raise InvalidInput(f"{out.uri} was locked by another run a moment ago; try again later")
        if (_read_lock(loc) or {}).get("owner") != owner:
            raise InvalidInput(f"{out.uri} was locked by another run a moment ago; try again later")
        lock = cls(loc=loc, owner=owner)
        with _LIVE_OWNERS_GUARD:
            _LIVE_OWNERS.add(owner)
        lock._thread = threading.Thread(target=lock._beat, args=(body,), daemon=True)
        lock._thread.start()
        return lock

    def _beat(self, body: dict) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            try:
                storage.publish_bytes(self.loc, json.dumps({**body, "heartbeat": time.time()}).encode())
            except Exception:  # noqa: BLE001 - a missed heartbeat only shortens the lock's life
                pass

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file if it is still ours.

        After this the lock is no longer live in this process even when the delete failed, so a
        later run here takes the leftover file over at once instead of waiting for it to expire.
        """
        self._stop.set()
        try:
            if self._thread is not None:
                self._thread.join(timeout=5)
            if (_read_lock(self.loc) or {}).get("owner") == self.owner:
                storage.delete(self.loc)
        finally:
            with _LIVE_OWNERS_GUARD:
                _LIVE_OWNERS.discard(self.owner)


def _read_lock(loc: storage.Location) -> dict | None:
    try:
        return json.loads(storage.read_bytes(loc))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    except (OSError, JobFailed):  # unreachable storage: no lock we can see
        return None


def _lock_is_stale(lock: dict) -> bool:
    if time.time() - float(lock.get("heartbeat", 0)) > LOCK_STALE_AFTER_S:
        return True
    if lock.get("host") == socket.gethostname():
        if _same_pid(lock.get("pid")):
            with _LIVE_OWNERS_GUARD:
                return lock.get("owner") not in _LIVE_OWNERS
        try:
            pid = int(lock.get("pid", -1))
        except (TypeError, ValueError):
            return False
        return process_exists(pid, lock.get("process_start")) is False
    return False


def _same_pid(pid: Any) -> bool:
    try:
        return int(pid) == os.getpid()
    except (TypeError, ValueError):
        return False


def _create_exclusive(loc: storage.Location, body: dict) -> bool:
    data = json.dumps(body).encode()
    if loc.is_s3:
        storage.publish_bytes(loc, data)
        return True
    try:
        fd = os.open(loc.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True
