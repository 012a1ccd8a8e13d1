"""plan_corpus / iter_shard: shards, layouts, ids, bad files, globs, S3 and bounded reads."""

from __future__ import annotations

import io
import os
import pickle
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ironsight.cluster import storage
from ironsight.cluster.corpus import CorpusPlan, plan_corpus
from ironsight.cluster.decode import decode_batch
from ironsight.cluster.errors import InvalidInput, JobFailed
from ironsight.cluster.footer import ImageLayout
from ironsight.cluster.preprocess import Preprocess
from ironsight.cluster.reader import iter_shard

PRE = Preprocess(resize=32, crop=32)


def png(color=(200, 30, 30), size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def write(path, columns: dict, row_group_size: int | None = None) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def read_all(plan: CorpusPlan, **kw) -> dict[str, list]:
    out: dict[str, list] = {"id": [], "image": [], "error": [], "row": [], "label": []}
    for shard in plan.shards:
        for batch in iter_shard(plan, shard, **kw):
            for key, values in batch.items():
                out[key].extend(list(values))
    return out


# ---- shard cutting and determinism ------------------------------------------------------

@pytest.mark.parametrize("rows, row_group_size, max_rows, expected", [
    (100, 25, 50, [((0, 1), 0, 50), ((2, 3), 50, 50)]),
    (100, 25, 60, [((0, 1), 0, 50), ((2, 3), 50, 50)]),
    (100, 25, 100, [((0, 1, 2, 3), 0, 100)]),
    (100, 25, 10, [((0,), 0, 25), ((1,), 25, 25), ((2,), 50, 25), ((3,), 75, 25)]),
    (90, 40, 1000, [((0, 1, 2), 0, 90)]),
    (90, 40, 40, [((0,), 0, 40), ((1,), 40, 40), ((2,), 80, 10)]),
])
def test_shards_group_consecutive_row_groups(tmp_path, rows, row_group_size, max_rows, expected):
    write(tmp_path / "c" / "a.parquet", {"image": [b"x"] * rows}, row_group_size)
    plan = plan_corpus(str(tmp_path / "c"), max_rows_per_shard=max_rows)
    assert [(s.row_groups, s.row_start, s.num_rows) for s in plan.shards] == expected
    assert [s.index for s in plan.shards] == list(range(len(expected)))
    assert plan.num_rows == rows


def test_plan_is_deterministic_and_small(synthetic_corpus):
    root = synthetic_corpus(60, rows_per_file=20, row_group_size=5)
    a = plan_corpus(root, max_rows_per_shard=10)
    b = plan_corpus(root, max_rows_per_shard=10)
    assert a == b and a.fingerprint() == b.fingerprint()
    ids = [s.shard_id for s in a.shards]
    assert len(set(ids)) == len(ids) == 6
    assert ids[0] == "f00000-rg00000-00001" and ids[-1] == "f00002-rg00002-00003"
    assert all(c.isalnum() or c == "-" for c in "".join(ids))
    assert pickle.loads(pickle.dumps(a)) == a  # shipped to Ray tasks
    assert len(pickle.dumps(a)) < 4000


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    write(tmp_path / "c" / "a.parquet", {"image": [b"x"] * 10})
    write(tmp_path / "c" / "b.parquet", {"image": [b"y"] * 10})
    before = plan_corpus(str(tmp_path / "c")).fingerprint()
    write(tmp_path / "c" / "b.parquet", {"image": [b"yy"] * 10})
    assert plan_corpus(str(tmp_path / "c")).fingerprint() != before


def test_fingerprint_depends_on_sharding_and_columns(tmp_path):
    write(tmp_path / "c" / "a.parquet", {"image": [b"x"] * 10, "other": [b"z"] * 10}, 5)
    base = plan_corpus(str(tmp_path / "c"), image_column="image")
    assert base.fingerprint() != plan_corpus(str(tmp_path / "c"), image_column="image",
                                             max_rows_per_shard=5).fingerprint()
    assert base.fingerprint() != plan_corpus(str(tmp_path / "c"),
                                             image_column="other").fingerprint()


def test_planning_1000_files_reads_only_footers_quickly(tmp_path):
    table = pa.table({"image": [b"x"]})
    for k in range(1000):
        pq.write_table(table, str(tmp_path / f"p-{k:04d}.parquet"))
    start = time.perf_counter()
    plan = plan_corpus(str(tmp_path))
    assert time.perf_counter() - start < 10.0
    assert len(plan.files) == 1000 and plan.num_rows == 1000 and len(plan.shards) == 1000


# ---- layouts ------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, expected, image_column", [
    ("bytes", ImageLayout.BYTES, "image"),
    ("hf", ImageLayout.HF_STRUCT, "image"),
    ("spark", ImageLayout.SPARK, "content"),
])
def test_synthetic_layouts_read_back(synthetic_corpus, layout, expected, image_column):
    root = synthetic_corpus(40, rows_per_file=20, row_group_size=10, layout=layout, size=32)
    plan = plan_corpus(root, max_rows_per_shard=10)
    assert (plan.layout, plan.image_column) == (expected, image_column)
    assert (plan.id_column, plan.label_column) == ("id", "label")
    got = read_all(plan)
    truth = pq.read_table(root).to_pydict()
    assert got["id"] == truth["id"] and got["label"] == truth["label"]
    assert got["row"] == list(range(20)) * 2
    pixels, errors = decode_batch(got["image"], PRE)
    assert errors == [None] * 40 and pixels.std() > 10


def test_path_layouts_fetch_relative_absolute_and_missing(tmp_path):
    # Images live outside the corpus directory: any non-Parquet file inside it is a bad file.
    os.makedirs(tmp_path / "imgs")
    (tmp_path / "imgs" / "red.png").write_bytes(png((255, 0, 0)))
    (tmp_path / "elsewhere.png").write_bytes(png((0, 0, 255)))
    paths = ["../imgs/red.png", str(tmp_path / "elsewhere.png"), "imgs/gone.png", None,
             f"file://{tmp_path / 'elsewhere.png'}"]
    struct = pa.StructArray.from_arrays(
        [pa.array([None] * 4 + [None], pa.binary()), pa.array(paths, pa.string())],
        names=["bytes", "path"])
    write(tmp_path / "c" / "a.parquet", {"image": struct})
    plan = plan_corpus(str(tmp_path / "c"))
    assert plan.layout is ImageLayout.HF_STRUCT
    got = read_all(plan)
    assert got["error"][2] == "missing_object: imgs/gone.png"
    assert got["error"][3].startswith("null_image: ")
    assert [e is None for e in got["error"]] == [True, True, False, False, True]
    pixels, errors = decode_batch(got["image"], PRE)
    assert pixels[0, 0, 0].tolist() == [255, 0, 0] and pixels[1, 0, 0].tolist() == [0, 0, 255]


def test_string_column_is_path_layout(tmp_path):
    (tmp_path / "a.png").write_bytes(png((0, 255, 0)))
    write(tmp_path / "t.parquet", {"image_path": ["a.png", "b.png"]})
    plan = plan_corpus(str(tmp_path / "t.parquet"))
    assert (plan.layout, plan.image_column, plan.id_column) == (ImageLayout.PATH, "image_path",
                                                                None)
    got = read_all(plan)
    assert got["image"][0] == png((0, 255, 0)) and got["error"] == [None, "missing_object: b.png"]


def test_prefers_named_image_column_among_binaries(tmp_path):
    write(tmp_path / "c" / "a.parquet", {"thumb": [b"t"], "image": [b"i"], "blob": [b"b"]})
    assert plan_corpus(str(tmp_path / "c")).image_column == "image"


def test_ambiguous_binary_columns_ask_for_image_column(tmp_path):
    write(tmp_path / "c" / "a.parquet", {"thumb": [b"t"], "blob": [b"b"]})
    with pytest.raises(InvalidInput, match="several image-like columns.*--image-column"):
        plan_corpus(str(tmp_path / "c"))
    assert plan_corpus(str(tmp_path / "c"), image_column="blob").image_column == "blob"


# ---- ids and labels ----------------------------------------------------------------------

@pytest.mark.parametrize("extra, id_column, ids", [
    ({"id": ["a", "b", None]}, "id", ["a", "b", "x.parquet#2"]),
    ({"key": pa.array([7, 8, 9], pa.int64())}, "key", ["7", "8", "9"]),
    ({"path": ["p/1.jpg", "p/2.jpg", "p/3.jpg"]}, "path", ["p/1.jpg", "p/2.jpg", "p/3.jpg"]),
    ({"id": [1.0, 2.0, 3.0]}, None, ["x.parquet#0", "x.parquet#1", "x.parquet#2"]),
    ({}, None, ["x.parquet#0", "x.parquet#1", "x.parquet#2"]),
])
def test_id_detection(tmp_path, extra, id_column, ids):
    write(tmp_path / "c" / "x.parquet", {"image": [b"1", b"2", b"3"], **extra})
    plan = plan_corpus(str(tmp_path / "c"))
    assert plan.id_column == id_column
    assert read_all(plan)["id"] == ids


def test_derived_ids_are_relative_to_input_directory(tmp_path):
    write(tmp_path / "c" / "2024" / "x.parquet", {"image": [b"1"]})
    plan = plan_corpus(str(tmp_path / "c"))
    assert read_all(plan)["id"] == ["2024/x.parquet#0"]


@pytest.mark.parametrize("labels, label_column, expected", [
    (pa.array([3, None, 1], pa.int32()), "label", [3, -1, 1]),
    (pa.array(["cat", "dog", "cat"]), None, []),
])
def test_label_detection(tmp_path, labels, label_column, expected):
    write(tmp_path / "c" / "x.parquet", {"image": [b"1", b"2", b"3"], "label": labels})
    plan = plan_corpus(str(tmp_path / "c"))
    assert plan.label_column == label_column
    got = read_all(plan)["label"]
    assert got == expected and all(isinstance(v, np.int64) for v in got)


@pytest.mark.parametrize("kwargs, message", [
    ({"image_column": "label"}, "column 'label' is int64; expected binary, struct<bytes: binary"),
    ({"image_column": "picture"}, "--image-column: column 'picture' not in "),
    ({"image_column": "picture"}, "; columns: image, label, name, score"),
    ({"id_column": "score"}, "id column 'score' is double; expected a string or integer"),
    ({"label_column": "name"}, "label column 'name' is string; expected an integer"),
    ({"label_column": "nope"}, "--label-column: column 'nope' not in "),
    ({"label_column": "lable"}, "; did you mean 'label'? columns: image, label, name, score"),
    ({"id_column": "nmae"}, "--id-column: column 'nmae' not in "),
])
def test_explicit_bad_columns_name_file_column_and_type(tmp_path, kwargs, message):
    write(tmp_path / "c" / "part-003.parquet", {"image": [b"1"], "label": [1], "name": ["a"],
                                                 "score": [0.5]})
    with pytest.raises(InvalidInput) as info:
        plan_corpus(str(tmp_path / "c"), **kwargs)
    assert "part-003.parquet" in str(info.value)
    assert message in str(info.value)


# ---- bad files ---------------------------------------------------------------------------

def _empty(path):
    write(path, {"image": pa.array([], pa.binary())})


def _not_parquet(path):
    path.write_text("id,image\n1,abc\n")


def _zero_bytes(path):
    path.write_bytes(b"")


def _corrupt_footer(path):
    write(path, {"image": [b"1"] * 5})
    data = bytearray(path.read_bytes())
    footer_len = int.from_bytes(data[-8:-4], "little")
    data[-8 - footer_len:-8] = b"\xff" * footer_len  # magic intact, footer garbage
    path.write_bytes(bytes(data))


def _no_image(path):
    write(path, {"id": ["a"], "label": [1]})


def _other_schema(path):
    write(path, {"image": ["not/bytes.jpg"], "id": ["z"]})


BAD_FILES = {
    "empty-0-rows": (_empty, "has 0 rows"),
    "non-parquet": (_not_parquet, "not a Parquet file"),
    "zero-bytes": (_zero_bytes, "not a Parquet file"),
    "corrupted-footer": (_corrupt_footer, "corrupted footer"),
    "no-image-column": (_no_image, "it has no column 'image'"),
    "schema-disagrees": (_other_schema, "schema differs from"),
}


@pytest.fixture
def corpus_with_bad_file(tmp_path, request):
    make, reason = BAD_FILES[request.param]
    root = tmp_path / "c"
    write(root / "a-good.parquet", {"image": [b"1", b"2"], "id": ["a", "b"]})
    make(root / "b-bad.parquet")
    write(root / "c-good.parquet", {"image": [b"3"], "id": ["c"]})
    return str(root), str(root / "b-bad.parquet"), reason


@pytest.mark.parametrize("corpus_with_bad_file", sorted(BAD_FILES), indirect=True)
def test_bad_file_is_named_before_any_work(corpus_with_bad_file):
    root, bad, reason = corpus_with_bad_file
    with pytest.raises(InvalidInput) as info:
        plan_corpus(root)
    message = str(info.value)
    listed = [line.strip() for line in message.splitlines() if line.startswith("  ")]
    assert len(listed) == 1 and listed[0].startswith(f"{bad}: ") and reason in listed[0]
    assert "--skip-bad-files" in message
    with pytest.raises(InvalidInput) as info:  # a caller without the option (audit)
        plan_corpus(root, can_skip=False)
    assert "skip" not in str(info.value).replace(bad, "")


@pytest.mark.parametrize("corpus_with_bad_file", sorted(BAD_FILES), indirect=True)
def test_skip_bad_files_lists_them_and_plans_the_rest(corpus_with_bad_file):
    root, bad, reason = corpus_with_bad_file
    plan = plan_corpus(root, skip_bad_files=True)
    assert [f for f, _ in plan.skipped] == [bad]
    assert reason in plan.skipped[0][1]
    assert [os.path.basename(f) for f in plan.files] == ["a-good.parquet", "c-good.parquet"]
    assert read_all(plan)["id"] == ["a", "b", "c"]


def test_first_file_without_image_column_says_what_is_expected(tmp_path):
    _no_image(tmp_path / "a.parquet")
    with pytest.raises(InvalidInput) as info:
        plan_corpus(str(tmp_path / "a.parquet"))
    assert f"{tmp_path}/a.parquet: has no image column: expected a binary column" in str(info.value)
    assert "id: string, label: int64" in str(info.value)


def test_all_files_bad_even_when_skipping(tmp_path):
    _not_parquet(tmp_path / "x.parquet")
    with pytest.raises(InvalidInput, match="no usable Parquet file"):
        plan_corpus(str(tmp_path), skip_bad_files=True)


@pytest.mark.parametrize("pattern", ["missing-dir", "empty-dir", "c/*.nothing"])
def test_input_matching_no_files(tmp_path, pattern):
    (tmp_path / "empty-dir").mkdir()
    write(tmp_path / "c" / "a.parquet", {"image": [b"1"]})
    with pytest.raises(InvalidInput, match="matches no files"):
        plan_corpus(str(tmp_path / pattern))


# ---- inputs: file, glob, directory ------------------------------------------------------

@pytest.mark.parametrize("pattern, files", [
    ("c", ["a.parquet", "b.parquet", "sub/c.parquet"]),
    ("c/*.parquet", ["a.parquet", "b.parquet"]),
    ("c/[ab].parquet", ["a.parquet", "b.parquet"]),
    ("c/b.parquet", ["b.parquet"]),
    ("c/sub/*", ["c.parquet"]),
])
def test_glob_directory_and_single_file(tmp_path, pattern, files):
    for name in ("a", "b", "sub/c"):
        write(tmp_path / "c" / f"{name}.parquet", {"image": [b"1"]})
    (tmp_path / "c" / "_SUCCESS").write_text("")
    plan = plan_corpus(str(tmp_path / pattern))
    assert [os.path.basename(f) for f in plan.files] == [os.path.basename(f) for f in files]
    assert list(plan.file_names) == files
    assert read_all(plan)["id"] == [f"{f}#0" for f in files]


# ---- bounded reading -------------------------------------------------------------------

def _clobber_chunk(path, row_group: int, column: str) -> None:
    """Overwrite one column chunk's bytes with garbage (the footer stays valid)."""
    meta = pq.read_metadata(path)
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    chunk = meta.row_group(row_group).column(names.index(column))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(open(path, "rb").read())
    data[start:start + chunk.total_compressed_size] = b"\xa5" * chunk.total_compressed_size
    open(path, "wb").write(bytes(data))


def test_iter_shard_reads_only_its_row_groups_and_columns(tmp_path):
    n = 40
    path = write(tmp_path / "c" / "a.parquet", {
        "id": [f"r{i}" for i in range(n)],
        "image": [png((i, 0, 0)) for i in range(n)],
        "junk": [b"j" * 100] * n,
    }, row_group_size=10)
    for rg in range(4):
        _clobber_chunk(path, rg, "junk")  # never read: not a needed column
    _clobber_chunk(path, 0, "image")  # row group 0 broken: only shard 0 may notice
    plan = plan_corpus(str(tmp_path / "c"), max_rows_per_shard=20)  # footers only: no error
    assert [s.row_groups for s in plan.shards] == [(0, 1), (2, 3)]
    batches = list(iter_shard(plan, plan.shards[1], batch_rows=7))
    assert [len(b["id"]) for b in batches] == [7, 7, 6]
    assert sum((b["id"] for b in batches), []) == [f"r{i}" for i in range(20, 40)]
    assert np.concatenate([b["row"] for b in batches]).tolist() == list(range(20, 40))
    assert batches[0]["image"][0] == png((20, 0, 0))
    with pytest.raises(JobFailed, match="a.parquet row group 0 failed: "):
        list(iter_shard(plan, plan.shards[0]))  # pyarrow's error, naming file and row group


# ---- S3 ----------------------------------------------------------------------------------

def test_s3_corpus_plans_and_reads(s3_bucket):
    from ironsight.cluster.synthetic import write_corpus

    write_corpus(f"{s3_bucket}/corpus", 30, rows_per_file=10, row_group_size=5, size=32)
    plan = plan_corpus(f"{s3_bucket}/corpus/", max_rows_per_shard=5)
    assert plan.files[0] == f"{s3_bucket}/corpus/part-00000.parquet"
    assert len(plan.shards) == 6 and plan.num_rows == 30
    assert plan.file_names == ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet")
    got = read_all(plan)
    assert got["id"] == [f"img-{i:08d}" for i in range(30)]
    pixels, errors = decode_batch(got["image"], PRE)
    assert errors == [None] * 30 and pixels.std() > 10


def test_s3_path_only_images_and_bad_file(s3_bucket):
    base = storage.resolve(f"{s3_bucket}/c")
    storage.publish_bytes(base.join("imgs", "a.png"), png((0, 0, 255)))
    struct = pa.StructArray.from_arrays(
        [pa.array([None, None, None], pa.binary()),
         pa.array(["imgs/a.png", f"{s3_bucket}/c/imgs/a.png", "imgs/gone.png"])],
        names=["bytes", "path"])
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"image": struct}), sink)
    storage.publish_bytes(base.join("good.parquet"), sink.getvalue())
    storage.publish_bytes(base.join("notes.parquet"), b"just some text, not parquet")
    with pytest.raises(InvalidInput, match=f"{s3_bucket}/c/notes.parquet: not a Parquet file"):
        plan_corpus(f"{s3_bucket}/c/*.parquet")
    plan = plan_corpus(f"{s3_bucket}/c/*.parquet", skip_bad_files=True)
    got = read_all(plan)
    assert got["image"][:2] == [png((0, 0, 255))] * 2
    assert got["error"] == [None, None, "missing_object: imgs/gone.png"]
