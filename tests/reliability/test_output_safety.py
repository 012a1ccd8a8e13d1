"""OUTPUT safety: Ironsight deletes or trusts only files it wrote, at OUTPUT's top level.

Each test reproduces a hole a hostile trial found (issue 17):

| hole | before                                                        | test                                   |
|------|---------------------------------------------------------------|----------------------------------------|
| 2    | ``--overwrite`` deleted every file under OUTPUT, recursively  | (a) ``..._parent_of_input...``, (b) ``..._another_jobs_run...`` |
| 3    | part files in a sub-folder counted as this run's commits      | (c) ``..._backup_subfolder...``        |
| 3    | OUTPUT inside / equal to INPUT broke every rerun               | (d) ``..._inside_or_equal...``         |
| 9    | OUTPUT a file, a read-only or full filesystem: tracebacks      | (e), (f) and the read-only tests       |

The disk-full and read-only cases use real tmpfs mounts (the tests run as root); where mounting
is not allowed they skip, and ``test_a_failed_commit_then_a_failed_flush_...`` covers the same
code path with a patched write.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import paths, storage, synthetic
from ironsight.cluster import sink as sink_mod
from ironsight.cluster.errors import InvalidInput, JobFailed
from ironsight.cluster.pipeline import run_classify
from ironsight.cluster.sink import LabelSink
from tests.cluster.test_sink import rows
from tests.reliability.conftest import REPO, cli, config, part_files, read_output

DEMO = ("--model", "demo_cnn", "--random-weights", "--no-progress")


def snapshot(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (hidden ones too)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def corpus(path: Path, n: int = 20, *, rows_per_file: int = 10) -> str:
    synthetic.write_corpus(str(path), n, seed=3, rows_per_file=rows_per_file, row_group_size=10, size=32)
    return str(path)


def input_ids(path: str) -> list[str]:
    return sorted(pq.read_table(path, columns=["id"]).column("id").to_pylist())


def open_sink(out, spec: str = "a" * 16, shards=("s0", "s1"), **kw) -> LabelSink:
    return LabelSink.open(str(out), spec_hash=spec, header={"model": {"name": "m"}}, expected_shards=shards, **kw)


# ---- (a) OUTPUT the parent of INPUT, with --overwrite ----------------------------------------

def test_overwrite_with_output_the_parent_of_input_is_refused_and_deletes_nothing(tmp_path):
    root = tmp_path / "home"
    corpus(root / "photos")
    (root / "notes.txt").write_text("my notes")
    (root / "taxes").mkdir()
    (root / "taxes" / "2025.pdf").write_bytes(b"%PDF precious")
    before = snapshot(root)
    result = cli("classify", str(root / "photos"), str(root), *DEMO, "--overwrite", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"OUTPUT {root} contains INPUT {root / 'photos'}" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(root) == before  # nothing deleted, nothing created


def test_overwrite_deletes_nothing_it_did_not_write_even_when_called_on_a_parent(tmp_path):
    """The library path below the CLI's check: the sink alone must not delete the corpus."""
    root = tmp_path / "home"
    corpus(root / "photos")  # files named part-00000.parquet, in a sub-folder
    (root / "notes.txt").write_text("my notes")
    (root / ".draft.tmp-1").write_text("a user's dot-file with .tmp- in its name")
    before = snapshot(root)
    sink = open_sink(root, spec="b" * 16, overwrite=True)
    sink.close()
    after = snapshot(root)
    assert {k: v for k, v in after.items() if k != "_manifest.json"} == before


# ---- (b) --overwrite on another job's run plus a user's files ---------------------------------

@pytest.fixture(scope="module")
def corpus40(tmp_path_factory) -> str:
    return corpus(tmp_path_factory.mktemp("c40") / "in", 40)


@pytest.mark.cluster
def test_overwrite_replaces_another_jobs_run_and_keeps_the_users_files(ray_cpu, corpus40, tmp_path):
    out = tmp_path / "out"
    run_classify(config(corpus40, out, top_k=5, max_rows_per_shard=10))
    old_parts = part_files(out)
    (out / "notes.txt").write_text("a user's notes")
    (out / "backup").mkdir()
    shutil.copy(old_parts[0], out / "backup" / old_parts[0].name)
    (out / ".draft.tmp-1").write_text("a user's dot-file")
    users = {k: v for k, v in snapshot(out).items() if k in ("notes.txt", ".draft.tmp-1") or k.startswith("backup/")}
    assert len(users) == 3

    with pytest.raises(InvalidInput, match="different job.*--overwrite"):
        run_classify(config(corpus40, out, top_k=3, max_rows_per_shard=10))
    summary = run_classify(config(corpus40, out, top_k=3, max_rows_per_shard=10, overwrite=True))

    after = snapshot(out)
    assert {k: after.get(k) for k in users} == users  # the user's files survive, byte for byte
    assert summary.shards_processed == 4 and summary.rows == 40
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == input_ids(corpus40)
    assert {len(x) for x in table.column("pred_topk_labels").to_pylist()} == {3}  # all from the new job


# ---- (c) an older run's parts in a sub-folder --------------------------------------------------

@pytest.mark.cluster
def test_parts_in_a_backup_subfolder_are_not_commits_and_a_deleted_shard_is_redone(ray_cpu, corpus40, tmp_path):
    out = tmp_path / "out"
    first = run_classify(config(corpus40, out, max_rows_per_shard=10))
    assert first.shards_processed == 4
    (out / "backup").mkdir()
    for p in part_files(out):
        shutil.copy(p, out / "backup" / p.name)
    part_files(out)[1].unlink()  # one shard's labels are lost; its copy is in backup/

    summary = run_classify(config(corpus40, out, max_rows_per_shard=10))

    assert (summary.shards_skipped, summary.shards_processed, summary.rows) == (3, 1, 10)
    ids = read_output(out).column("id").to_pylist()
    assert sorted(ids) == input_ids(corpus40)  # every input row exactly once
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["committed_rows"] == success["summary"]["rows_total"] == 40
    assert json.loads((out / "_manifest.json").read_text())["committed_rows"] == 40
    assert len(list((out / "backup").iterdir())) == 4  # the backup is neither read nor touched


def test_commits_are_listed_at_the_top_level_only_on_s3(s3_bucket):
    out = f"{s3_bucket}/out"
    sink = open_sink(out, shards=("s0", "s1"))
    sink.commit("s0", rows(["a", "b"]))
    sink.close()
    loc = storage.resolve(out)
    data = storage.read_bytes(loc.join("part-s0.parquet"))
    storage.publish_bytes(loc.join("backup/part-s1.parquet"), data)  # an old run's copy of a shard
    storage.publish_bytes(loc.join("backup/part-s0.parquet"), data)
    resumed = open_sink(out, shards=("s0", "s1"))
    assert set(resumed.committed) == {"s0"}  # backup/part-s1 is not a commit
    resumed.close()
    assert [i.base_name for i in storage.list_dir(loc)] == ["_manifest.json", "part-s0.parquet"]


def test_output_root_is_never_walked():
    names = [i.path for i in storage.list_dir(storage.resolve("/"))]
    assert all(p.count("/") == 1 for p in names), names[:5]
    with pytest.raises(InvalidInput, match="OUTPUT / contains INPUT"):
        paths.check_output("/data/in", "/")


# ---- (d) OUTPUT inside or equal to INPUT --------------------------------------------------------

# The CLI's main with ray.init replaced by a trap: reaching Ray leaves a marker and exits 99.
_TRAP = (
    "import sys, ray\n"
    "def trap(*a, **k):\n"
    "    open(sys.argv[1], 'w').write('ray.init was called')\n"
    "    sys.exit(99)\n"
    "ray.init = trap\n"
    "from ironsight.jobs.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def _cpu_of(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cli_without_ray(marker: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI with Ray trapped; returns the result and the CPU seconds it used."""
    return _cpu_of([sys.executable, "-c", _TRAP, str(marker), *args])


@pytest.fixture(scope="module")
def import_cpu() -> float:
    """CPU seconds to import what the CLI imports for classify and audit (torch, torchvision...).

    On the shared 2-core test box the imports alone take 3-5 s of CPU and 8-14 s of wall
    time, so the refusal is timed against them: what it adds must be small.
    """
    done, cpu = _cpu_of([sys.executable, "-c", "import ray, ironsight.jobs.cli, ironsight.jobs.audit, ironsight.cluster.pipeline"])
    assert done.returncode == 0, done.stderr[-2000:]
    return cpu


@pytest.mark.parametrize(
    ("command", "where", "why"),
    [
        ("classify", "equal", "is the INPUT folder"),
        ("classify", "inside", "lies inside INPUT"),
        ("audit", "inside", "lies inside eval set INPUT"),
        ("audit", "equal", "is the eval set INPUT folder"),
    ],
)
def test_output_inside_or_equal_to_input_is_refused_before_ray(tmp_path, import_cpu, command, where, why):
    data = tmp_path / "data"
    corpus(data)
    out = data if where == "equal" else data / "labels"
    before = snapshot(data)
    marker = tmp_path / "ray-was-started"
    result, cpu = cli_without_ray(marker, command, str(data), str(out), *DEMO)
    assert result.returncode == 2, result.stderr[-2000:]
    assert why in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()  # refused before Ray
    # Ray's start alone costs several CPU seconds; the refusal adds little to the imports.
    assert cpu - import_cpu < 1.5, f"the refusal took {cpu:.1f} s of CPU, importing {import_cpu:.1f} s"
    assert snapshot(data) == before and not (data / "labels").exists()


def test_a_glob_input_allows_an_output_beside_its_matches(tmp_path):
    paths.check_output(str(tmp_path / "in-*.parquet"), str(tmp_path / "out"))
    with pytest.raises(InvalidInput, match="lies inside INPUT"):
        paths.check_output(str(tmp_path / "*" / "x.parquet"), str(tmp_path / "out"))


def test_s3_containment_is_decided_at_a_slash():
    paths.check_output("s3://b/in", "s3://b/in-labels")
    for out, why in (("s3://b/in/labels", "lies inside"), ("s3://b", "contains"), ("s3://b/in/", "is the INPUT")):
        with pytest.raises(InvalidInput, match=why):
            paths.check_output("s3://b/in", out)


# ---- (e) OUTPUT a regular file ------------------------------------------------------------------

def test_output_that_is_a_file_is_refused_in_one_line(tmp_path):
    data = corpus(tmp_path / "in")
    target = tmp_path / "labels.parquet"
    target.write_bytes(b"a user's file")
    marker = tmp_path / "ray-was-started"
    result, _ = cli_without_ray(marker, "classify", data, str(target), *DEMO)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"ironsight: error: OUTPUT {target} is a file, not a folder: Ironsight writes one "
                     "Parquet file per shard into a folder; choose a folder (a new one is created)"]
    assert target.read_bytes() == b"a user's file" and not marker.exists()


def test_the_sink_refuses_a_file_output_too(tmp_path):
    target = tmp_path / "f"
    target.write_text("x")
    with pytest.raises(InvalidInput, match="is a file, not a folder"):
        open_sink(target)
    with pytest.raises(InvalidInput, match="which is a file"):
        paths.check_output(str(tmp_path / "in"), str(target / "out"))


# ---- a part file that Ironsight did not write ---------------------------------------------------

@pytest.mark.parametrize("overwrite", [False, True])
def test_a_top_level_part_file_ironsight_did_not_write_is_refused_and_kept(tmp_path, overwrite):
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "part-00000.parquet")  # e.g. Spark's output
    (tmp_path / "part-s0.parquet").write_bytes(b"not parquet at all")
    before = snapshot(tmp_path)
    with pytest.raises(InvalidInput, match="did not write.*part-00000.parquet"):
        open_sink(tmp_path, overwrite=overwrite)
    assert snapshot(tmp_path) == before


def test_a_part_file_of_this_spec_missing_from_the_manifest_is_a_commit_and_another_specs_is_not(tmp_path):
    s = open_sink(tmp_path, spec="b" * 16)
    s.commit("s1", rows(["x"]))
    s.close()
    other = (tmp_path / "part-s1.parquet").read_bytes()
    (tmp_path / "_manifest.json").unlink()
    s = open_sink(tmp_path, spec="a" * 16, overwrite=True)  # deletes spec b's part (its footer says so)
    s.commit("s0", rows(["a", "b"]))
    s._lock.release()  # killed before the manifest flush
    (tmp_path / "_manifest.json").write_text(json.dumps({"spec_hash": "a" * 16, "shards": {}}))
    (tmp_path / "part-s1.parquet").write_bytes(other)  # another spec's shard s1 comes back
    with pytest.raises(InvalidInput, match="different job"):
        open_sink(tmp_path, spec="a" * 16)
    (tmp_path / "part-s1.parquet").unlink()
    resumed = open_sink(tmp_path, spec="a" * 16)
    assert set(resumed.committed) == {"s0"} and resumed.committed["s0"].rows == 2
    resumed.close()


def test_only_its_own_temp_files_are_removed(tmp_path):
    own = [".part-s0.parquet.tmp-deadbeef", "._manifest.json.tmp-0123abcd", "._SUCCESS.tmp-00000000"]
    users = [".notes.tmp-deadbeef", ".part-s0.parquet.tmp-backup", "x.tmp-deadbeef"]
    for name in own + users:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / own[0]).write_text("x")
    open_sink(tmp_path).close()
    left = set(os.listdir(tmp_path))
    assert not left & set(own) and set(users) <= left and (tmp_path / "sub" / own[0]).exists()


def test_a_manifest_naming_paths_outside_output_deletes_nothing_there(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    manifest = {"spec_hash": "b" * 16, "shards": {"s0": {"rows": 1, "errors": 0, "sha256": "x", "file": "../victim.txt"}}}
    (out / "_manifest.json").write_text(json.dumps(manifest))
    open_sink(out, overwrite=True).close()
    assert victim.read_text() == "keep me"


# ---- (f) disk full, and a read-only filesystem ---------------------------------------------------

@contextmanager
def tmpfs(path: Path, size: str = "1m"):
    """A real tmpfs of ``size`` at ``path``; skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the patched-write test covers this")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def fill(fs: Path) -> None:
    """Fill a filesystem to the last byte with a file in a sub-folder (not OUTPUT's own)."""
    (fs / "filler").mkdir(exist_ok=True)
    with open(fs / "filler" / "blob", "wb", buffering=0) as f:  # unbuffered: close() flushes nothing
        for chunk in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


def test_disk_full_during_a_commit_shows_the_first_error_and_close_only_warns(tmp_path, ironsight_log):
    with tmpfs(tmp_path / "small", "256k") as fs:
        sink = open_sink(fs, shards=("s0", "s1"))
        sink.commit("s0", rows(["a", "b"]))  # committed; the manifest flush waits (MANIFEST_FLUSH_S)
        assert sink._dirty
        fill(fs)
        with pytest.raises(JobFailed) as info:
            sink.commit("s1", rows([f"id-{i}" for i in range(500)]))
        message = str(info.value)
        assert "shard s1" in message and "part-s1.parquet" in message and "no space left on device" in message
        assert "\n" not in message
        sink.close()  # the manifest flush fails too: a warning, not a second error
        assert any(r.levelno == logging.WARNING and "could not flush" in r.getMessage()
                   and "no space left" in r.getMessage() for r in ironsight_log.records)
        assert not (fs / "_lock.json").exists()
        assert not [n for n in os.listdir(fs) if ".tmp-" in n]  # no half-written file stays
        assert pq.read_table(fs / "part-s0.parquet").num_rows == 2  # the first commit stands
        shutil.rmtree(fs / "filler")
        resumed = open_sink(fs, shards=("s0", "s1"))  # space freed: the same run resumes
        assert set(resumed.committed) == {"s0"}
        resumed.close()


@pytest.mark.cluster
def test_disk_full_in_a_classify_run_is_a_job_failed_naming_the_file(ray_cpu, corpus40, tmp_path):
    with tmpfs(tmp_path / "small", "12k") as fs:  # room for the lock, the manifest and one page
        out = fs / "labels"
        with pytest.raises(JobFailed) as info:
            run_classify(config(corpus40, out, max_rows_per_shard=10))
        message = str(info.value)
        assert "no space left on device" in message and str(out) in message, message
        assert not (out / "_SUCCESS").exists() and not (out / "_lock.json").exists()
        for p in part_files(out):  # whatever was committed is whole
            assert pq.read_table(p).num_rows == 10


def test_a_failed_commit_then_a_failed_flush_raise_only_the_first(tmp_path, monkeypatch, ironsight_log):
    """The disk-full path without a mount: every write after the first commit fails with ENOSPC."""
    sink = open_sink(tmp_path, shards=("s0", "s1"))
    sink.commit("s0", rows(["a"]))

    def full(loc, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), loc.path)

    monkeypatch.setattr(sink_mod.storage, "publish_bytes", full)
    with pytest.raises(JobFailed, match="shard s1.*part-s1.parquet.*no space left on device"):
        sink.commit("s1", rows(["b"]))
    sink.close()
    assert any(r.levelno == logging.WARNING and "could not flush" in r.getMessage() for r in ironsight_log.records)


def test_a_read_only_output_is_refused_in_one_line(tmp_path):
    data = corpus(tmp_path / "in")
    with tmpfs(tmp_path / "ro", "64k") as fs:
        (fs / "existing").mkdir()
        remount_read_only(fs)
        for out, why in ((fs / "new", "cannot create OUTPUT"), (fs / "existing", "cannot write to OUTPUT")):
            with pytest.raises(InvalidInput) as info:
                run_classify(config(data, out))  # refused at open, before any Ray work
            message = str(info.value)
            assert message.startswith(f"{why} {out}") and "read-only file system" in message, message
            assert "\n" not in message


def test_the_audit_refuses_a_read_only_output_before_running(tmp_path):
    from ironsight.jobs.audit import _prepare_output

    with tmpfs(tmp_path / "ro", "64k") as fs:
        remount_read_only(fs)
        with pytest.raises(InvalidInput, match=r"cannot write to OUTPUT .*: read-only file system"):
            _prepare_output(str(fs))
        with pytest.raises(InvalidInput, match=r"cannot write to OUTPUT .*: read-only file system"):
            _prepare_output(str(fs / "new"))
