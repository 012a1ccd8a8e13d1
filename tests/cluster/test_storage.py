"""ironsight.cluster.storage: URIs, listing, atomic publish and retries, locally and on a real S3 server."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from ironsight.cluster import storage, storage_errors
from ironsight.cluster.errors import InvalidInput, JobFailed


@pytest.mark.parametrize("uri, path, is_s3", [
    ("/data/corpus", "/data/corpus", False),
    ("file:///data/corpus", "/data/corpus", False),
    ("s3://bucket/prefix/", "bucket/prefix", True),
    ("s3://bucket", "bucket", True),
])
def test_resolve(uri, path, is_s3):
    loc = storage.resolve(uri)
    assert (loc.path, loc.is_s3) == (path, is_s3)
    assert not loc.uri.endswith("/")


def test_resolve_relative_and_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert storage.resolve("out/x").path == str(tmp_path / "out" / "x")
    assert storage.resolve("~/y").path == str(tmp_path / "home" / "y")


@pytest.mark.parametrize("uri, message", [
    ("s3://", "names no bucket"),
    ("gs://bucket/x", "unsupported URI scheme 'gs'"),
    ("http://host/x", "unsupported URI scheme 'http'"),
])
def test_resolve_rejects(uri, message):
    with pytest.raises(InvalidInput, match=message):
        storage.resolve(uri)


@pytest.mark.parametrize("uri, parts, path, joined", [
    ("/a/b", ("c", "d.txt"), "/a/b/c/d.txt", "/a/b/c/d.txt"),
    ("s3://bkt/pre/", ("x.parquet",), "bkt/pre/x.parquet", "s3://bkt/pre/x.parquet"),
])
def test_join(uri, parts, path, joined):
    child = storage.resolve(uri).join(*parts)
    assert (child.path, child.uri) == (path, joined)


@pytest.fixture
def tree(tmp_path):
    for name in ("a.parquet", "b.txt", "sub/c.parquet", "sub/deeper/d.parquet", "_SUCCESS",
                 ".hidden", "_tmp/e.parquet", ".cache/f.parquet", "sub/_manifest.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


@pytest.mark.parametrize("pattern, suffix, expected", [
    ("", None, ["a.parquet", "b.txt", "sub/c.parquet", "sub/deeper/d.parquet"]),
    ("", ".parquet", ["a.parquet", "sub/c.parquet", "sub/deeper/d.parquet"]),
    ("a.parquet", None, ["a.parquet"]),
    ("*.parquet", None, ["a.parquet"]),
    ("sub/*.parquet", None, ["sub/c.parquet"]),
    ("*/*.parquet", None, ["sub/c.parquet"]),
    ("sub/*/?.parquet", None, ["sub/deeper/d.parquet"]),
    ("[ab].*", None, ["a.parquet", "b.txt"]),
    ("missing", None, []),
    ("missing/*.parquet", None, []),
])
def test_list_files_local(tree, pattern, suffix, expected):
    loc = storage.resolve(str(tree / pattern) if pattern else str(tree))
    got = [os.path.relpath(i.path, tree) for i in storage.list_files(loc, suffix)]
    assert got == expected


def test_publish_is_atomic_and_leaves_no_temp_files(tmp_path):
    loc = storage.resolve(str(tmp_path / "out" / "part-0.bin"))
    storage.publish_bytes(loc, b"first")
    storage.publish_bytes(loc, pa.py_buffer(b"second"))
    assert storage.read_bytes(loc) == b"second"
    assert os.listdir(tmp_path / "out") == ["part-0.bin"]


def test_publish_failure_keeps_old_file_and_cleans_up(tmp_path):
    loc = storage.resolve(str(tmp_path / "f.bin"))
    storage.publish_bytes(loc, b"old")
    with pytest.raises(TypeError):
        storage.publish_bytes(loc, 12345)  # not a buffer: fails while writing the temp file
    assert storage.read_bytes(loc) == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_publishing_a_stream_fails_whole_and_keeps_the_old_file(tmp_path):
    loc = storage.resolve(str(tmp_path / "labels.parquet"))
    storage.publish_bytes(loc, b"old")
    with pytest.raises(RuntimeError, match="writer died"), storage.publishing(loc) as f:
        f.write(b"half of a new file")
        raise RuntimeError("writer died")
    assert storage.read_bytes(loc) == b"old"
    assert os.listdir(tmp_path) == ["labels.parquet"]
    with storage.publishing(loc) as f:
        f.write(b"new ")
        f.write(b"file")
    assert storage.read_bytes(loc) == b"new file"


def test_publishing_to_s3_is_one_put(s3_bucket):
    loc = storage.resolve(f"{s3_bucket}/reports/report.json")
    with storage.publishing(loc) as f:
        f.write(b"{}")
    assert storage.read_bytes(loc) == b"{}"


def test_schedule_state_is_published_atomically(tmp_path):
    """The schedule's tick state goes through storage.publish_bytes: no ``.json.tmp`` of its
    own is left beside it."""
    import datetime as dt

    from ironsight.jobs.cron import TickState

    state = TickState(tmp_path, "nightly")
    tick = dt.datetime(2026, 11, 25, 2, 0, tzinfo=dt.timezone.utc)
    state.save(tick)
    assert state.load() == tick
    assert [n for n in os.listdir(tmp_path) if "tmp" in n] == []


def test_exists_delete_and_missing(tmp_path):
    loc = storage.resolve(str(tmp_path / "x"))
    assert not storage.exists(loc)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(loc)
    storage.publish_bytes(loc, b"1")
    assert storage.exists(loc)
    storage.delete(loc)
    storage.delete(loc)  # deleting what is gone is fine
    assert not storage.exists(loc)


class Flaky:
    def __init__(self, failures: int, exc: Exception):
        self.failures, self.exc, self.calls = failures, exc, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


@pytest.mark.parametrize("failures, exc, calls, outcome", [
    (0, OSError("x"), 1, "ok"),
    (3, OSError("connection reset"), 4, "ok"),
    (4, OSError("connection reset"), 4, JobFailed),
    (1, FileNotFoundError("gone"), 1, FileNotFoundError),
    (1, InvalidInput("bad"), 1, InvalidInput),
    (1, ValueError("bug"), 1, ValueError),
])
def test_with_retries(failures, exc, calls, outcome):
    fn = Flaky(failures, exc)
    if outcome == "ok":
        assert storage_errors.with_retries(fn, what="reading thing", attempts=4, base_delay=0) == "ok"
    else:
        with pytest.raises(outcome) as info:
            storage_errors.with_retries(fn, what="reading thing", attempts=4, base_delay=0)
        if outcome is JobFailed:
            assert str(info.value) == ("reading thing failed after 4 attempts: "
                                       "connection reset")
    assert fn.calls == calls


def test_s3_round_trip(s3_bucket):
    root = storage.resolve(f"{s3_bucket}/run")
    assert root.is_s3 and storage.list_files(root) == []
    for name in ("a.parquet", "sub/b.parquet", "_SUCCESS", "c.json"):
        storage.publish_bytes(root.join(*name.split("/")), name.encode())
    assert storage.read_bytes(root.join("sub", "b.parquet")) == b"sub/b.parquet"
    listed = [i.path for i in storage.list_files(root)]
    prefix = root.path + "/"
    assert listed == [prefix + n for n in ("a.parquet", "c.json", "sub/b.parquet")]
    globbed = storage.list_files(storage.resolve(f"{s3_bucket}/run/*.parquet"))
    assert [i.path for i in globbed] == [prefix + "a.parquet"]
    assert storage.list_files(root, ".json")[0].size == len(b"c.json")
    target = root.join("a.parquet")
    assert storage.exists(target)
    storage.delete(target)
    storage.delete(target)
    assert not storage.exists(target)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(target)


def test_s3_filesystem_follows_environment(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")  # wins over AWS_ENDPOINT_URL
    monkeypatch.setenv("IRONSIGHT_S3_MAX_ATTEMPTS", "1")
    monkeypatch.setattr(storage_errors, "_sleep", lambda seconds: None)  # skip the outer backoff
    with pytest.raises(JobFailed, match="listing s3://nowhere"):
        storage.list_files(storage.resolve("s3://nowhere/*.parquet"))
