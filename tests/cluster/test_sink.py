"""The exactly-once sink: atomic commits, resume, spec-hash refusal, and the output lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import output_lock
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.output_format import LABELS_SCHEMA
from ironsight.cluster.sink import LabelSink


def rows(ids: list[str], error_at: int | None = None) -> pa.Table:
    n = len(ids)
    err = [("corrupt: bad bytes" if i == error_at else None) for i in range(n)]
    return pa.table(
        {
            "id": ids,
            "pred_label": [None if e else i % 3 for i, e in enumerate(err)],
            "pred_label_name": [None if e else f"c{i % 3}" for i, e in enumerate(err)],
            "pred_score": [None if e else 0.5 for e in err],
            "pred_topk_labels": [None if e else [i % 3, 0] for i, e in enumerate(err)],
            "pred_topk_scores": [None if e else [0.5, 0.2] for e in err],
            "error": err,
            "pred_worker": ["0a1b2c3d/41/-"] * n,
            "decode_worker": ["0a1b2c3d/42"] * n,
        },
        schema=LABELS_SCHEMA,
    )


def open_sink(out, spec="a" * 16, shards=("s0", "s1"), **kw) -> LabelSink:
    return LabelSink.open(str(out), spec_hash=spec, header={"model": {"name": "m"}}, expected_shards=shards, **kw)


def test_commit_publishes_one_file_per_shard_with_metadata(tmp_path):
    s = open_sink(tmp_path)
    rec = s.commit("s0", rows(["a", "b", "c"], error_at=1))
    s.finish({"ok": True})
    s.close()
    table = pq.read_table(tmp_path / "part-s0.parquet")
    assert table.column("id").to_pylist() == ["a", "b", "c"]
    assert table.schema.metadata[b"ironsight.spec_hash"] == b"a" * 16
    assert table.schema.metadata[b"ironsight.shard_id"] == b"s0"
    assert (rec.rows, rec.errors) == (3, 1)
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert manifest["shards"]["s0"]["rows"] == 3
    assert manifest["spec_hash"] == "a" * 16
    assert (tmp_path / "_SUCCESS").is_file()
    assert not (tmp_path / "_lock.json").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_resume_finds_shards_committed_after_the_last_manifest_flush(tmp_path):
    s = open_sink(tmp_path)
    s.commit("s0", rows(["a", "b"]))
    s._lock.release()  # simulate a crash: no close(), so no final flush
    (tmp_path / "_manifest.json").write_text(json.dumps({"spec_hash": "a" * 16, "shards": {}}))
    resumed = open_sink(tmp_path)
    assert set(resumed.committed) == {"s0"}
    assert resumed.committed["s0"].rows == 2
    resumed.close()


def test_a_different_spec_is_refused_and_overwrite_replaces(tmp_path):
    s = open_sink(tmp_path)
    s.commit("s0", rows(["a"]))
    s.close()
    with pytest.raises(InvalidInput, match="different job.*--overwrite"):
        open_sink(tmp_path, spec="b" * 16)
    assert (tmp_path / "part-s0.parquet").is_file()  # refusal touched nothing
    s2 = open_sink(tmp_path, spec="b" * 16, overwrite=True)
    assert s2.committed == {}
    assert not (tmp_path / "part-s0.parquet").exists()
    s2.close()


def test_part_files_of_another_corpus_are_refused(tmp_path):
    s = open_sink(tmp_path, shards=("x9",))
    s.commit("x9", rows(["a"]))
    s.close()
    (tmp_path / "_manifest.json").unlink()
    with pytest.raises(InvalidInput, match="x9"):
        open_sink(tmp_path)


def test_stale_temp_files_from_a_killed_publish_are_removed(tmp_path):
    (tmp_path / ".part-s0.parquet.tmp-deadbeef").write_bytes(b"half a file")
    open_sink(tmp_path).close()
    assert not (tmp_path / ".part-s0.parquet.tmp-deadbeef").exists()


def test_committing_a_shard_twice_is_a_bug(tmp_path):
    s = open_sink(tmp_path)
    s.commit("s0", rows(["a"]))
    with pytest.raises(AssertionError):
        s.commit("s0", rows(["a"]))
    s.close()


def test_a_live_run_holds_the_output(tmp_path):
    s = open_sink(tmp_path)
    with pytest.raises(InvalidInput, match="in use by another run"):
        open_sink(tmp_path)
    s.close()
    open_sink(tmp_path).close()  # released: usable again


def test_a_dead_runs_lock_is_taken_over(tmp_path):
    # a process that exited: its pid no longer exists on this host
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    lock = {"owner": "x", "host": socket.gethostname(), "pid": dead_pid, "heartbeat": time.time()}
    (tmp_path / "_lock.json").write_text(json.dumps(lock))
    open_sink(tmp_path).close()


def test_an_old_heartbeat_expires(tmp_path):
    lock = {"owner": "x", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - output_lock.LOCK_STALE_AFTER_S - 5}
    (tmp_path / "_lock.json").write_text(json.dumps(lock))
    open_sink(tmp_path).close()


def test_a_fresh_heartbeat_from_another_host_is_respected(tmp_path):
    lock = {"owner": "x", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    (tmp_path / "_lock.json").write_text(json.dumps(lock))
    with pytest.raises(InvalidInput, match="elsewhere"):
        open_sink(tmp_path)
