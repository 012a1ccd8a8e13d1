"""Rows whose image cannot be read, and Parquet files whose footer lies.

A path row naming ``/proc/self/mem`` (EIO), ``/proc/kmsg`` (blocks forever), a FIFO (blocks
until a writer comes), ``/dev/zero`` or ``/dev/urandom`` (never end) becomes an error row and
the job goes on. A footer that parses but contradicts its file is a bad file at planning
(exit 2, named, before Ray starts; ``--skip-bad-files`` leaves it out); a lie only visible
in the data fails the job with a plain message naming the file and row group.

Tests that run a whole job are marked ``cluster``; the others read the corpus in-process.
"""

from __future__ import annotations

import errno
import io
import itertools
import os
import re
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ironsight.cluster import reader
from ironsight.cluster.corpus import plan_corpus
from ironsight.cluster.errors import InvalidInput, JobFailed
from ironsight.cluster.reader import iter_shard
from tests.reliability.conftest import cli, part_files

MODEL = ("--model", "demo_cnn", "--random-weights", "--no-progress")
ANSI = re.compile(r"\x1b[\[\]]")


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buf, "PNG")
    return buf.getvalue()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("IRONSIGHT_ALLOWED_ROOTS", None)  # the hostile paths must reach the reader
    return env


# ---- rows whose image path cannot be read ---------------------------------------------------

# id -> the start of its error (None: labeled)
EXPECTED = {
    "proc-self-mem": "not_a_regular_file: image /proc/self/mem is a device or kernel file",
    "proc-kmsg": "not_a_regular_file: image /proc/kmsg is a device or kernel file",
    "fifo": "not_a_regular_file: image {imgs}/pipe.png is a named pipe",
    "dev-zero": "not_a_regular_file: image /dev/zero is a device or kernel file",
    "dev-urandom": "not_a_regular_file: image /dev/urandom is a device or kernel file",
    "link-to-dev-zero": "not_a_regular_file: image {imgs}/zero.png is a device or kernel file",
    "directory": "not_a_regular_file: image {imgs} is a directory",
    "gone": "missing_object: {imgs}/gone.png",
}
GOOD = 6


@pytest.fixture
def hostile_corpus(tmp_path) -> tuple[str, dict[str, str | None]]:
    """A path-column corpus: GOOD real PNGs between rows that name kernel files, a FIFO, devices."""
    imgs = tmp_path / "imgs"  # outside the input directory: every file there is read as Parquet
    imgs.mkdir()
    rows: dict[str, str] = {}
    for i in range(GOOD):
        (imgs / f"good-{i}.png").write_bytes(_png((40 * i, 200, 90)))
        rows[f"good-{i}"] = str(imgs / f"good-{i}.png")
    os.mkfifo(imgs / "pipe.png")
    os.symlink("/dev/zero", imgs / "zero.png")
    rows.update({
        "proc-self-mem": "/proc/self/mem", "proc-kmsg": "/proc/kmsg", "fifo": str(imgs / "pipe.png"),
        "dev-zero": "/dev/zero", "dev-urandom": "/dev/urandom",
        "link-to-dev-zero": str(imgs / "zero.png"), "directory": str(imgs),
        "gone": str(imgs / "gone.png"),
    })
    bad, good = sorted(EXPECTED), [f"good-{i}" for i in range(GOOD)]
    ids = [x for pair in itertools.zip_longest(bad, good) for x in pair if x]  # interleaved
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ids, "image": [rows[i] for i in ids]}),
                   tmp_path / "in" / "part-0.parquet", row_group_size=4)
    expected = {i: (EXPECTED[i].format(imgs=imgs) if i in EXPECTED else None) for i in ids}
    return str(tmp_path / "in"), expected


def _read_all(plan) -> dict[str, tuple[bytes | None, str | None]]:
    got: dict[str, tuple[bytes | None, str | None]] = {}
    for shard in plan.shards:
        for batch in iter_shard(plan, shard):
            for i, img, err in zip(batch["id"], batch["image"], batch["error"], strict=True):
                assert i not in got
                got[i] = (img, err)
    return got


def _within(seconds: float, fn):
    """``fn()``'s result, failing the test (not hanging it) if it takes longer."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s: a read hangs"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_each_unreadable_path_is_an_error_row_and_nothing_hangs(hostile_corpus):
    root, expected = hostile_corpus
    got = _within(20, lambda: _read_all(plan_corpus(root)))
    assert set(got) == set(expected)
    for row_id, reason in expected.items():
        image, error = got[row_id]
        if reason is None:
            assert error is None and image.startswith(b"\x89PNG"), (row_id, error)
        else:
            assert image is None and error is not None and error.startswith(reason), (row_id, error)


def test_an_os_error_while_reading_is_the_rows_error(tmp_path, monkeypatch):
    """EIO (a failing disk, /proc/self/mem read straight) names errno and path on the row."""
    good, bad = tmp_path / "good.png", tmp_path / "bad-sector.png"
    good.write_bytes(_png((1, 2, 3)))
    bad.write_bytes(_png((4, 5, 6)))
    real_fdopen = os.fdopen

    class FailingDisk(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b):  # noqa: ARG002
            raise OSError(errno.EIO, "Input/output error")

    def fdopen(fd, *args, **kwargs):
        if os.readlink(f"/proc/self/fd/{fd}") == str(bad):
            return io.BufferedReader(FailingDisk())
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(reader.os, "fdopen", fdopen)
    fetcher = reader._Fetcher(reader.storage.resolve(str(tmp_path / "c.parquet")))
    assert fetcher.fetch(str(good)) == (good.read_bytes(), None)
    assert fetcher.fetch(str(bad)) == (None, f"unreadable: EIO (Input/output error) reading {bad}")
    os.chmod(bad, 0)
    if os.geteuid() != 0:  # root reads a mode-0 file anyway
        assert fetcher.fetch(str(bad))[1].startswith(f"unreadable: EACCES (Permission denied) reading {bad}")


def test_a_file_over_the_size_cap_is_an_error_row_and_is_not_read_whole(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    big.write_bytes(_png((9, 9, 9)) + b"\0" * 5000)
    monkeypatch.setattr(reader, "MAX_IMAGE_BYTES", 1000)
    image, error = reader._Fetcher(reader.storage.resolve(str(tmp_path / "c.parquet"))).fetch(str(big))
    assert image is None and error.startswith(f"too_large: image {big} is larger than 1,000 bytes")


@pytest.mark.cluster
def test_classify_labels_every_other_row_and_gives_each_unreadable_row_its_reason(hostile_corpus, tmp_path):
    root, expected = hostile_corpus
    out = tmp_path / "out"
    result = cli("classify", root, str(out), *MODEL, "--max-rows-per-shard", "4", timeout=240, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    table = pads.dataset([str(p) for p in part_files(out)], format="parquet").to_table()
    rows = dict(zip(table.column("id").to_pylist(), table.to_pylist(), strict=True))
    assert table.num_rows == len(rows) == len(expected)  # each input row exactly once
    for row_id, reason in expected.items():
        if reason is None:
            assert rows[row_id]["error"] is None and rows[row_id]["pred_label"] is not None, rows[row_id]
        else:
            assert rows[row_id]["pred_label"] is None and rows[row_id]["error"].startswith(reason), rows[row_id]
    assert f"error rows: {len(EXPECTED)}" in result.stdout
    assert (out / "_SUCCESS").exists()


# ---- footers that lie ------------------------------------------------------------------------

def _good_bytes(n: int = 40, row_group_size: int = 20) -> bytes:
    table = pa.table({"id": [f"r{i:02d}" for i in range(n)],
                      "image": pa.array([_png((i, 100, 200)) for i in range(n)], pa.binary())})
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, row_group_size=row_group_size, compression="none",
                   use_dictionary=False, write_statistics=False)
    return buf.getvalue().to_pybytes()


def _split(data: bytes) -> tuple[bytes, bytes]:
    """(everything before the footer, the footer's Thrift bytes)."""
    n = int.from_bytes(data[-8:-4], "little")
    return data[:-8 - n], data[-8 - n:-8]


def _join(body: bytes, footer: bytes) -> bytes:
    return body + footer + len(footer).to_bytes(4, "little") + b"PAR1"


def _zigzag(v: int) -> int:
    assert 0 <= v < 64  # one varint byte
    return v << 1


def _patch_count(data: bytes, old: int, new: int, changed) -> bytes:
    """``data`` with the one footer count ``old`` -> ``new`` for which ``changed(metadata)`` holds.

    Counts are Thrift compact varints (one byte each here): each byte that encodes ``old`` is
    tried in turn and the footer re-parsed, so the edit lands on the field meant, whatever
    the Thrift layout of this pyarrow version.
    """
    body, footer = _split(data)
    for i, b in enumerate(footer):
        if b != _zigzag(old):
            continue
        patched = _join(body, footer[:i] + bytes([_zigzag(new)]) + footer[i + 1:])
        try:
            meta = pq.read_metadata(pa.BufferReader(patched))
        except (pa.ArrowException, OSError):
            continue
        if changed(meta):
            return patched
    raise AssertionError("no footer byte holds that count")


def _rg_rows(meta) -> list[int]:
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def _values(meta, rg: int) -> list[int]:
    return [meta.row_group(rg).column(c).num_values for c in range(meta.num_columns)]


def _truncated_with_its_footer() -> bytes:
    """A file cut after its first row group, with the whole file's footer grafted on: it
    parses, and its second row group's chunks point past the end."""
    data = _good_bytes()
    body, footer = _split(data)
    first = pq.read_metadata(pa.BufferReader(data)).row_group(0)
    end = max(first.column(c).data_page_offset + first.column(c).total_compressed_size
              for c in range(first.num_columns))
    return _join(body[:end], footer)


def _row_group_claims_more_rows() -> bytes:
    return _patch_count(_good_bytes(), 20, 30, lambda m: _rg_rows(m) == [20, 30] and m.num_rows == 40)


def _column_claims_more_values() -> bytes:
    return _patch_count(_good_bytes(), 20, 30,
                        lambda m: _rg_rows(m) == [20, 20] and _values(m, 1) == [20, 30])


LIES = {  # file name -> (bytes, what the refusal says)
    "truncated-with-its-footer": (_truncated_with_its_footer, "row group 1, column 'id' claims bytes"),
    "row-group-claims-more-rows": (_row_group_claims_more_rows, "row group 1, column 'id' holds 20 values for 30 rows"),
    "column-claims-more-values": (_column_claims_more_values, "row group 1, column 'image' holds 30 values for 20 rows"),
}


@pytest.fixture
def lying_corpus(tmp_path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    (root / "a-good.parquet").write_bytes(_good_bytes())
    for name, (make, _) in LIES.items():
        (root / f"b-{name}.parquet").write_bytes(make())
    return root


@pytest.mark.parametrize("name", sorted(LIES))
def test_each_lying_footer_parses_but_is_refused_at_planning_by_name(tmp_path, name):
    make, says = LIES[name]
    path = tmp_path / f"{name}.parquet"
    path.write_bytes(make())
    pq.read_metadata(path)  # a footer that parses: not a "corrupted footer"
    with pytest.raises(InvalidInput) as info:
        plan_corpus(str(path))
    assert f"{path}: inconsistent footer: {says}" in str(info.value)
    assert info.value.exit_code == 2


def test_skip_bad_files_plans_around_every_lying_footer(lying_corpus):
    plan = plan_corpus(str(lying_corpus), skip_bad_files=True)
    assert [Path(f).name for f in plan.files] == ["a-good.parquet"] and plan.num_rows == 40
    assert sorted(Path(f).name for f, _ in plan.skipped) == sorted(f"b-{n}.parquet" for n in LIES)
    assert all(why.startswith("inconsistent footer: ") for _, why in plan.skipped)


def test_the_cli_exits_2_naming_each_lying_file_before_ray_starts(lying_corpus, tmp_path):
    out = tmp_path / "out"
    env = _env()
    # Were Ray started, it would try to join this address and fail: exit 2 proves it was not.
    env["RAY_ADDRESS"] = "127.0.0.1:9"
    result = cli("classify", str(lying_corpus), str(out), *MODEL, timeout=120, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    for name, (_, says) in LIES.items():
        assert f"b-{name}.parquet: inconsistent footer: {says}" in result.stderr
    assert "a-good.parquet" not in result.stderr and "--skip-bad-files" in result.stderr
    assert "Ray" not in result.stderr and not ANSI.search(result.stderr)
    assert not out.exists() or not part_files(out)


@pytest.mark.cluster
def test_the_cli_with_skip_bad_files_labels_the_good_file(lying_corpus, tmp_path):
    out = tmp_path / "out"
    result = cli("classify", str(lying_corpus), str(out), *MODEL, "--skip-bad-files", timeout=240, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    ids = pads.dataset([str(p) for p in part_files(out)], format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == [f"r{i:02d}" for i in range(40)]
    for name in LIES:
        assert f"b-{name}.parquet: inconsistent footer" in result.stdout


# ---- lies only the data shows --------------------------------------------------------------

def _consistent_lie() -> bytes:
    """Row group 1 claims 30 rows, every column 30 values, the file 50 rows: the footer adds
    up, but the pages hold 20 rows."""
    data = _patch_count(_good_bytes(), 20, 30, lambda m: _rg_rows(m) == [20, 30])
    data = _patch_count(data, 20, 30, lambda m: _values(m, 1) == [30, 20])
    data = _patch_count(data, 20, 30, lambda m: _values(m, 1) == [30, 30])
    return _patch_count(data, 40, 50, lambda m: m.num_rows == 50)


def _garbage_page() -> bytes:
    """Row group 1's image column starts with garbage where its page header should be."""
    data = bytearray(_good_bytes())
    meta = pq.read_metadata(pa.BufferReader(bytes(data)))
    chunk = meta.row_group(1).column(1)
    data[chunk.data_page_offset:chunk.data_page_offset + 16] = b"\xa5" * 16
    return bytes(data)


@pytest.mark.parametrize("make, says", [
    (_consistent_lie, "row group 1 failed: it holds 20 rows but its footer says 30"),
    (_garbage_page, "row group 1 failed: "),
])
def test_a_lie_only_the_data_shows_fails_the_shard_naming_file_and_row_group(tmp_path, make, says):
    path = tmp_path / "in" / "a.parquet"
    path.parent.mkdir()
    path.write_bytes(make())
    plan = plan_corpus(str(path.parent), max_rows_per_shard=20)  # the footer passes every check
    first, second = plan.shards
    assert sum(len(b["id"]) for b in iter_shard(plan, first)) == 20  # row group 0 is fine
    with pytest.raises(JobFailed) as info:
        list(iter_shard(plan, second))
    assert f"reading {path} {says}" in str(info.value)


@pytest.mark.cluster
def test_a_job_failing_on_a_bad_row_group_says_so_in_one_plain_line(tmp_path):
    """Hole: "the Ray pipeline failed:" then ANSI escape codes, naming neither file nor row."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.parquet").write_bytes(_garbage_page())
    out = tmp_path / "out"
    result = cli("classify", str(root), str(out), *MODEL, "--max-rows-per-shard", "20", timeout=240, env=_env())
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("ironsight: error:")]
    assert line.startswith(f"ironsight: error: the Ray pipeline failed: reading {root / 'a.parquet'} "
                           "row group 1 failed: "), line
    assert not ANSI.search(line) and "ray::" not in line
    assert not (out / "_SUCCESS").exists()
