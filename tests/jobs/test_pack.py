"""`ironsight pack DIR OUT.parquet`: a folder of images into Parquet, with the folder's ids."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import synthetic
from ironsight.cluster.corpus import plan_corpus
from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.pack import pack_folder

IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]
NAMES = ["dog/2.jpg", "cat/1.PNG", "cat/sub/3.jpeg", "cat/0.webp", "bird/9.png"]


def make_folder(root, names=NAMES) -> str:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ext = name.rsplit(".", 1)[-1].lower()
        path.write_bytes(synthetic.encode(synthetic.render_image(9, i, size=24)[0],
                                          "jpeg" if ext in ("jpg", "jpeg") else ext))
    return str(root)


def test_pack_writes_ids_bytes_and_folder_labels_in_row_groups(tmp_path):
    folder = make_folder(tmp_path / "photos")
    out = tmp_path / "photos.parquet"
    assert pack_folder(folder, str(out), label_from_folder=True, rows_per_group=2) == 5
    meta = pq.ParquetFile(out).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2, 2, 1]
    table = pq.read_table(out)
    assert table.column_names == ["id", "image", "label", "label_name"]
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["bird/9.png", "cat/0.webp", "cat/1.PNG", "cat/sub/3.jpeg",
                                       "dog/2.jpg"]
    # ImageFolder order: class folders sorted by name; a nested image takes its top-level folder
    assert [(r["label"], r["label_name"]) for r in rows] == [
        (0, "bird"), (1, "cat"), (1, "cat"), (1, "cat"), (2, "dog")]
    assert rows[4]["image"] == (tmp_path / "photos" / "dog" / "2.jpg").read_bytes()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # the temp file was renamed


def test_the_packed_file_plans_with_the_folders_ids(tmp_path):
    folder = make_folder(tmp_path / "photos")
    out = tmp_path / "photos.parquet"
    pack_folder(folder, str(out))
    assert pq.read_table(out).column_names == ["id", "image"]
    packed = plan_corpus(str(out))
    assert packed.id_column == "id" and packed.image_column == "image"
    ids = pq.read_table(out, columns=["id"]).column("id").to_pylist()
    assert tuple(ids) == plan_corpus(folder).file_names


def test_pack_refuses_an_existing_out_unless_overwrite(tmp_path):
    folder = make_folder(tmp_path / "photos", ["a.jpg"])
    out = tmp_path / "out.parquet"
    out.write_text("precious")
    with pytest.raises(InvalidInput, match="exists; pass --overwrite"):
        pack_folder(folder, str(out))
    assert out.read_text() == "precious"
    assert pack_folder(folder, str(out), overwrite=True) == 1
    assert pq.read_table(out).num_rows == 1
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(InvalidInput, match="is a folder"):
        pack_folder(folder, str(tmp_path / "dir.parquet"), overwrite=True)


def test_pack_refuses_out_inside_dir_loose_images_and_parquet_folders(tmp_path):
    folder = make_folder(tmp_path / "photos", ["a.jpg", "cat/b.jpg"])
    with pytest.raises(InvalidInput, match="lies inside DIR"):
        pack_folder(folder, str(tmp_path / "photos" / "packed.parquet"))
    with pytest.raises(InvalidInput, match="a.jpg lies directly in"):
        pack_folder(folder, str(tmp_path / "x.parquet"), label_from_folder=True)
    assert not (tmp_path / "x.parquet").exists()
    pack_folder(folder, str(tmp_path / "x.parquet"))
    with pytest.raises(InvalidInput, match="is a Parquet corpus, not a folder of images"):
        pack_folder(str(tmp_path / "x.parquet"), str(tmp_path / "y.parquet"))
    with pytest.raises(InvalidInput, match="--rows-per-group must be at least 1"):
        pack_folder(folder, str(tmp_path / "z.parquet"), rows_per_group=0)


def test_an_unreadable_image_stops_the_pack_and_leaves_no_out(tmp_path, monkeypatch):
    from ironsight.cluster import reader

    folder = make_folder(tmp_path / "photos", ["a.jpg", "b.jpg", "c.jpg"])
    os.symlink("/dev/zero", tmp_path / "photos" / "zero.jpg")  # not a regular file: not listed
    (tmp_path / "photos" / "b.jpg").write_bytes(b"\xff\xd8" + b"0" * 5000)
    monkeypatch.setattr(reader, "MAX_IMAGE_BYTES", 4000)  # b.jpg is over the cap
    out = tmp_path / "out.parquet"
    with pytest.raises(InvalidInput, match="cannot pack .*: b.jpg: too_large: "):
        pack_folder(folder, str(out), rows_per_group=1)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    monkeypatch.undo()
    assert pack_folder(folder, str(out)) == 3  # a.jpg, b.jpg, c.jpg; never /dev/zero


def test_pack_through_the_cli(tmp_path):
    folder = make_folder(tmp_path / "photos")
    out = tmp_path / "photos.parquet"
    proc = subprocess.run([*IRONSIGHT, "pack", folder, str(out), "--label-from-folder",
                           "--rows-per-group", "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"packed 5 images from {folder} into {out}" in proc.stdout
    assert pq.ParquetFile(out).metadata.num_row_groups == 2
    again = subprocess.run([*IRONSIGHT, "pack", folder, str(out)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr


@pytest.mark.cluster
def test_the_packed_file_classifies_with_the_folders_ids_and_labels(tmp_path):
    # both runs share one embedded Ray (the CLI cases above and in test_image_folder.py cover
    # the command line)
    from ironsight.cluster.models import ModelSource
    from ironsight.cluster.pipeline import ClassifyConfig, run_classify
    from ironsight.cluster.raycluster import connect

    folder = make_folder(tmp_path / "photos")
    packed = tmp_path / "photos.parquet"
    pack_folder(folder, str(packed))
    outputs = {}
    with connect(None, num_cpus=2):
        for name, source in (("folder", folder), ("packed", str(packed))):
            out = tmp_path / f"labels-{name}"
            run_classify(ClassifyConfig(input=source, output=str(out), progress=False,
                                        source=ModelSource(name="demo_cnn", random_weights=True)))
            outputs[name] = pads.dataset(str(out), format="parquet").to_table(
                columns=["id", "pred_label", "pred_score", "error"]).sort_by("id").to_pylist()
    assert [r["id"] for r in outputs["folder"]] == sorted(NAMES)
    assert outputs["folder"] == outputs["packed"]
