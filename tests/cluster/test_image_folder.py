"""A folder (or glob, or s3:// prefix) of JPEG/PNG/WebP files is an INPUT: one row per file."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import reader, synthetic
from ironsight.cluster.corpus import plan_corpus
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.footer import ImageLayout
from ironsight.cluster.reader import iter_shard

IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]


def image(i: int, fmt: str = "png") -> bytes:
    img, _ = synthetic.render_image(3, i, size=32)
    return synthetic.encode(img, "jpeg" if fmt in ("jpg", "jpeg") else fmt)


def make_folder(root, names: list[str]) -> str:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image(i, name.rsplit(".", 1)[-1].lower()))
    return str(root)


def read_all(plan) -> dict[str, list]:
    out: dict[str, list] = {"id": [], "image": [], "error": [], "row": []}
    for shard in plan.shards:
        for batch in iter_shard(plan, shard, batch_rows=2):
            for key in out:
                out[key] += list(batch[key])
    return out


NAMES = ["dogs/b.JPG", "cats/z.png", "cats/a.jpeg", "top.webp", "cats/deeper/x.PNG"]


def test_a_folder_of_images_is_planned_sorted_with_relative_posix_ids(tmp_path):
    folder = make_folder(tmp_path / "photos", NAMES)
    plan = plan_corpus(folder, max_rows_per_shard=2)
    assert plan.layout is ImageLayout.FILES and plan.num_rows == 5
    assert plan.file_names == ("cats/a.jpeg", "cats/deeper/x.PNG", "cats/z.png", "dogs/b.JPG",
                               "top.webp")
    assert [(s.row_start, s.num_rows) for s in plan.shards] == [(0, 2), (2, 2), (4, 1)]
    assert len({s.shard_id for s in plan.shards}) == 3
    again = plan_corpus(folder, max_rows_per_shard=2)
    assert again == plan and again.fingerprint() == plan.fingerprint()
    got = read_all(plan)
    assert got["id"] == list(plan.file_names) and got["error"] == [None] * 5
    assert got["row"] == [0, 1, 2, 3, 4]
    assert got["image"][3] == (tmp_path / "photos" / "dogs" / "b.JPG").read_bytes()


def test_a_glob_and_a_single_image_file(tmp_path):
    folder = make_folder(tmp_path / "photos", NAMES)
    plan = plan_corpus(f"{folder}/cats/*.png")
    assert plan.file_names == ("z.png",)
    plan = plan_corpus(f"{folder}/cats/*")  # a glob's * stays within one folder
    assert plan.file_names == ("a.jpeg", "z.png")
    single = plan_corpus(f"{folder}/top.webp")
    assert single.file_names == ("top.webp",) and read_all(single)["error"] == [None]


def test_images_mixed_with_parquet_are_refused_naming_both(tmp_path):
    folder = make_folder(tmp_path / "photos", ["a.jpg", "b.png"])
    pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "photos" / "labels.parquet")
    with pytest.raises(InvalidInput, match=r"mixes 2 image file\(s\) \(a\.jpg, \.\.\.\) with 1 "
                       r"Parquet file\(s\) \(labels\.parquet\)") as err:
        plan_corpus(folder)
    assert "either a Parquet corpus or a folder of images" in str(err.value)
    with pytest.raises(InvalidInput, match="mixes"):
        plan_corpus(folder, skip_bad_files=True)
    # the Parquet file alone is still a corpus
    assert plan_corpus(f"{folder}/*.parquet").layout is ImageLayout.BYTES


def test_other_files_among_images_are_bad_files_and_can_be_skipped(tmp_path):
    folder = make_folder(tmp_path / "photos", ["a.jpg", "b.png"])
    (tmp_path / "photos" / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInput, match=r"notes\.txt: not an image file") as err:
        plan_corpus(folder)
    assert "--skip-bad-files" in str(err.value)
    plan = plan_corpus(folder, skip_bad_files=True)
    assert plan.file_names == ("a.jpg", "b.png")
    assert plan.skipped[0][0].endswith("notes.txt")


def test_columns_cannot_be_named_for_an_image_folder(tmp_path):
    folder = make_folder(tmp_path / "photos", ["a.jpg"])
    with pytest.raises(InvalidInput, match="image_column cannot be used"):
        plan_corpus(folder, image_column="image")
    with pytest.raises(InvalidInput, match="has no columns to keep"):
        plan_corpus(folder, keep_columns=["path"])
    assert plan_corpus(folder, keep_columns=["*"]).keep_columns == ()


def test_unreadable_image_files_become_error_rows(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "photos", ["a.jpg", "big.png", "c.png", "pipe.jpg"])
    os.mkfifo(tmp_path / "photos" / "fifo.jpg")  # not a file: never listed
    (tmp_path / "photos" / "empty.png").write_bytes(b"")
    plan = plan_corpus(folder)
    assert "fifo.jpg" not in plan.file_names
    # swapped for a FIFO after planning: a reader would block on it forever
    (tmp_path / "photos" / "pipe.jpg").unlink()
    os.mkfifo(tmp_path / "photos" / "pipe.jpg")
    cap = max(len((tmp_path / "photos" / n).read_bytes()) for n in ("a.jpg", "c.png"))
    monkeypatch.setattr(reader, "MAX_IMAGE_BYTES", cap)
    (tmp_path / "photos" / "big.png").write_bytes(b"\x89PNG" + b"0" * cap)
    got = dict(zip(*(lambda r: (r["id"], r["error"]))(read_all(plan)), strict=True))
    assert got["a.jpg"] is None and got["c.png"] is None and got["empty.png"] is None
    assert got["pipe.jpg"].startswith("not_a_regular_file: ")
    assert got["big.png"].startswith("too_large: ")
    (tmp_path / "photos" / "c.png").unlink()  # gone between planning and reading
    got = dict(zip(*(lambda r: (r["id"], r["error"]))(read_all(plan)), strict=True))
    assert got["c.png"].startswith("missing_object: ")


def test_an_image_folder_outside_the_allowed_roots_is_refused(tmp_path):
    folder = make_folder(tmp_path / "photos", ["a.jpg"])
    (tmp_path / "allowed").mkdir()
    with pytest.raises(InvalidInput, match="input: .*outside"):
        plan_corpus(folder, allowed_roots=[str(tmp_path / "allowed")])


def test_an_s3_prefix_of_images_is_read_too(tmp_path, s3_bucket):
    import boto3

    bucket = s3_bucket[len("s3://"):]
    client = boto3.client("s3")
    for i, key in enumerate(["in/cats/a.jpg", "in/dogs/B.PNG"]):
        client.put_object(Bucket=bucket, Key=key, Body=image(i, key.rsplit(".", 1)[-1].lower()))
    plan = plan_corpus(f"{s3_bucket}/in")
    assert plan.layout is ImageLayout.FILES and plan.file_names == ("cats/a.jpg", "dogs/B.PNG")
    got = read_all(plan)
    assert got["error"] == [None, None] and got["image"][1] == image(1, "png")


@pytest.mark.cluster
def test_classify_a_folder_of_images_through_the_cli(tmp_path):
    folder = make_folder(tmp_path / "photos", NAMES)
    (tmp_path / "photos" / "cats" / "broken.jpg").write_bytes(b"<html>not found</html>")
    out = tmp_path / "labels"
    proc = subprocess.run([*IRONSIGHT, "classify", folder, str(out), "--model", "demo_cnn",
                           "--random-weights", "--no-progress", "--max-rows-per-shard", "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "labeled 6 rows" in proc.stdout and "error rows: 1" in proc.stdout
    table = pads.dataset(str(out), format="parquet").to_table().sort_by("id")
    rows = {r["id"]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted([*NAMES, "cats/broken.jpg"])
    assert rows["cats/broken.jpg"]["error"].startswith("not_an_image: ")
    assert all(rows[n]["error"] is None and rows[n]["pred_label"] is not None for n in NAMES)
    assert len(list(out.glob("part-*.parquet"))) == 2
