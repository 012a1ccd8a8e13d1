"""--keep-columns copies input columns next to the predictions; prediction columns are pred_*.

Output format version 2: an OUTPUT of version 1 (label, score, ...) is another job's output.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import synthetic
from ironsight.cluster.corpus import plan_corpus
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.output_format import FORMAT_VERSION, LABELS_SCHEMA, output_schema
from ironsight.cluster.reader import read_kept
from ironsight.cluster.sink import LabelSink

IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]
T0 = datetime.datetime(2026, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)


def write(path, cols: dict, **kw) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path, **kw)
    return str(path)


def user_corpus(tmp_path) -> str:
    """A corpus as users have it: ground-truth label, a URL, a capture time, a nested field."""
    n = 6
    blobs = [synthetic.encode(synthetic.render_image(5, i, size=32)[0]) for i in range(n)]
    write(tmp_path / "c" / "a.parquet", {
        "id": [f"r{i}" for i in range(n)],
        "image": pa.array(blobs, pa.binary()),
        "label": pa.array(range(n), pa.int16()),
        "url": [f"https://x/{i}.jpg" for i in range(n)],
        "captured": pa.array([T0 + datetime.timedelta(minutes=i) for i in range(n)],
                             pa.timestamp("ms", tz="UTC")),
        "tags": pa.array([["a"] * (i % 3) for i in range(n)], pa.list_(pa.string())),
    }, row_group_size=4)
    return str(tmp_path / "c")


def test_star_keeps_every_column_but_the_image_and_the_id(tmp_path):
    plan = plan_corpus(user_corpus(tmp_path), keep_columns=["*"], max_rows_per_shard=4)
    assert plan.keep_columns == ("label", "url", "captured", "tags")
    kept = read_kept(plan, plan.shards[1])  # row group 1: rows 4-5
    assert kept.num_rows == 2 and kept.column("url").to_pylist() == ["https://x/4.jpg", "https://x/5.jpg"]
    assert kept.schema.field("label").type == pa.int16()
    assert kept.schema.field("captured").type == pa.timestamp("ms", tz="UTC")
    assert plan.fingerprint() != plan_corpus(str(tmp_path / "c")).fingerprint()


def test_a_missing_column_is_refused_with_a_did_you_mean(tmp_path):
    corpus = user_corpus(tmp_path)
    with pytest.raises(InvalidInput, match=r"has no column 'captued'; did you mean 'captured'\?") as err:
        plan_corpus(corpus, keep_columns=["url", "captued"])
    assert "(columns: id, image, label, url, captured, tags)" in str(err.value)
    with pytest.raises(InvalidInput, match="cannot be combined"):
        plan_corpus(corpus, keep_columns=["*", "url"])


def test_an_input_column_named_like_an_output_column_is_refused(tmp_path):
    corpus = user_corpus(tmp_path)
    with pytest.raises(InvalidInput, match="'id' has the name of an output column .the id column"):
        plan_corpus(corpus, keep_columns=["id"])
    write(tmp_path / "d" / "a.parquet", {"image": [b"x"], "error": ["bad scan"], "pred_score": [0.3]})
    with pytest.raises(InvalidInput, match="'error' has the name of an output column"):
        plan_corpus(str(tmp_path / "d"), keep_columns=["*"])
    with pytest.raises(InvalidInput, match="cannot keep input column.*'pred_score'"):
        output_schema(pa.schema([("pred_score", pa.float64())]))


def test_the_image_column_is_kept_only_when_named_and_then_with_a_warning(tmp_path, ironsight_log):
    corpus = user_corpus(tmp_path)
    plan = plan_corpus(corpus, keep_columns=["image"])
    assert plan.keep_columns == ("image",)
    assert "names the image column 'image'" in ironsight_log.text and "as large as INPUT" in ironsight_log.text


def test_a_kept_column_must_have_one_type_in_every_file(tmp_path):
    corpus = user_corpus(tmp_path)
    write(tmp_path / "c" / "b.parquet", {"image": [b"x"], "id": ["z"], "label": [1],
                                         "url": [3]})
    with pytest.raises(InvalidInput, match="b.parquet: schema differs .* kept column 'url' is int64"):
        plan_corpus(corpus, keep_columns=["url"])
    assert plan_corpus(corpus).num_rows == 7  # url is not read without keep_columns


def _sink(tmp_path, spec="a" * 16, **kw):
    return LabelSink.open(str(tmp_path), spec_hash=spec, header={"input": "in"},
                          expected_shards=["s0"], **kw)


def _rows(**kept) -> pa.Table:
    cols = {"id": ["x"], "pred_label": [1], "pred_label_name": ["one"], "pred_score": [0.5],
            "pred_topk_labels": [[1]], "pred_topk_scores": [[0.5]], "error": [None], **kept}
    return pa.table(cols)


def test_the_sink_writes_kept_columns_after_the_labels_with_their_types(tmp_path):
    sink = _sink(tmp_path)
    sink.commit("s0", _rows(captured=pa.array([T0], pa.timestamp("ms", tz="UTC")),
                            label=pa.array([7], pa.int16())))
    sink.close()
    table = pq.read_table(tmp_path / "part-s0.parquet")
    assert table.column_names == [*LABELS_SCHEMA.names, "captured", "label"]
    assert table.schema.field("label").type == pa.int16()
    assert table.column("captured").to_pylist() == [T0]
    meta = table.schema.metadata
    assert meta[b"ironsight.format_version"] == str(FORMAT_VERSION).encode() == b"3"


def test_an_output_of_the_old_format_is_refused_not_mixed(tmp_path):
    old = pa.table({"id": ["x"], "label": [1], "label_name": ["one"], "score": [0.5],
                    "topk_labels": [[1]], "topk_scores": [[0.5]], "error": [None]})
    pq.write_table(old.replace_schema_metadata({b"ironsight.spec_hash": b"a" * 16}),
                   tmp_path / "part-s0.parquet")
    # no manifest (killed before its first flush): the footer alone says it is version 1
    with pytest.raises(InvalidInput, match="different job"):
        _sink(tmp_path)
    (tmp_path / "_manifest.json").write_text(json.dumps(
        {"format": "ironsight-labels", "version": 1, "spec_hash": "a" * 16,
         "shards": {"s0": {"rows": 1, "errors": 0, "sha256": "0" * 64, "file": "part-s0.parquet"}}}))
    with pytest.raises(InvalidInput, match="output format version 1 .*this Ironsight writes version 3"):
        _sink(tmp_path)
    assert (tmp_path / "part-s0.parquet").is_file()  # refusal touched nothing
    sink = _sink(tmp_path, overwrite=True)
    assert sink.committed == {} and not (tmp_path / "part-s0.parquet").exists()
    sink.close()


def test_an_output_of_version_2_is_refused_naming_the_worker_columns_it_lacks(tmp_path):
    sink = _sink(tmp_path)
    sink.commit("s0", _rows())  # pred_worker / decode_worker left out: written as nulls
    sink.close()
    assert pq.read_table(tmp_path / "part-s0.parquet").column("pred_worker").null_count == 1
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    (tmp_path / "_manifest.json").write_text(json.dumps({**manifest, "version": 2}))
    with pytest.raises(InvalidInput, match=r"output format version 2 \(no pred_worker and "
                                           r"decode_worker columns\), and this Ironsight writes version 3"):
        _sink(tmp_path)


def test_a_missing_kept_column_exits_2_before_ray_through_the_cli(tmp_path):
    corpus = user_corpus(tmp_path)
    out = tmp_path / "labels"
    proc = subprocess.run([*IRONSIGHT, "classify", corpus, str(out), "--model", "demo_cnn",
                           "--random-weights", "--keep-columns", "url,lable"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    # one line, from planning: Ray never started
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("ironsight: error: keep_columns: ")
    assert "has no column 'lable'; did you mean 'label'?" in proc.stderr
    assert not out.exists()


@pytest.mark.cluster
def test_kept_columns_sit_next_to_the_predictions_through_the_cli(tmp_path):
    corpus = user_corpus(tmp_path)
    out = tmp_path / "labels"
    proc = subprocess.run([*IRONSIGHT, "classify", corpus, str(out), "--model", "demo_cnn",
                           "--random-weights", "--no-progress", "--keep-columns", "*"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = pads.dataset(str(out), format="parquet").to_table().sort_by("id")
    assert table.column_names == [*LABELS_SCHEMA.names, "label", "url", "captured", "tags"]
    truth = pq.read_table(corpus).sort_by("id")
    for name in ("label", "url", "captured", "tags"):
        assert table.schema.field(name).type == truth.schema.field(name).type, name
        assert table.column(name).to_pylist() == truth.column(name).to_pylist(), name
    assert table.column("id").to_pylist() == truth.column("id").to_pylist()
    assert all(p is not None for p in table.column("pred_label").to_pylist())
