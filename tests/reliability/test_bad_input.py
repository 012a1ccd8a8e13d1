"""Bad input end to end: broken images, odd rows, bad files and bad model files.

One embedded Ray for the module; each corpus is labeled once by a module-scoped fixture and
the parametrized tests check one case each against that run's output.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ironsight.cluster import synthetic
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models import ModelSource
from ironsight.cluster.pipeline import run_classify
from tests.reliability.conftest import cli, config, part_files, predictor_actors, read_output

pytestmark = pytest.mark.cluster


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(w: int = 120, h: int = 90) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    px = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], -1)
    return Image.fromarray(px.astype(np.uint8))


def _bomb_png(w: int, h: int) -> bytes:
    """A valid PNG signature + IHDR declaring w x h and a few rows of data: a tiny bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    idat = zlib.compress(b"\x00" * (1 + 3 * w) * 4, 9)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _palette_transparent() -> bytes:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (0, 0, 40, 20))
    return _encode(img, "PNG", transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    return _encode(_photo(), "JPEG", exif=exif.tobytes())


BOMB = _bomb_png(30000, 30000)
# case -> (image bytes, None when it must get a label, else the error reason it must get)
IMAGES: dict[str, tuple[bytes, str | None]] = {
    "zero-bytes": (b"", "empty"),
    "truncated-jpeg": (_encode(_photo(), "JPEG")[:300], "truncated"),
    "truncated-png": (_encode(_photo(), "PNG")[:50], "truncated"),
    "random-bytes": (np.random.default_rng(3).bytes(4000), "not_an_image"),
    "html-error-page-as-jpg": (
        b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head>"
        b"<body><h1>Service Unavailable</h1></body></html>\n",
        "not_an_image",
    ),
    "decompression-bomb-30000x30000": (BOMB, "too_many_pixels"),
    "1x1": (_encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), None),
    "10000x40": (_encode(_photo(10000, 40), "JPEG"), None),
    "cmyk-jpeg": (_encode(Image.new("RGB", (40, 40), (255, 0, 0)).convert("CMYK"), "JPEG"), None),
    "16-bit-png": (_encode(Image.fromarray(np.full((40, 40), 0x8040, np.uint16)), "PNG"), None),
    "palette-png-transparency": (_palette_transparent(), None),
    "grayscale": (_encode(Image.new("L", (40, 40), 77), "PNG"), None),
    "animated-gif": (_animated_gif(), None),
    "webp": (_encode(_photo(), "WEBP", quality=80), None),
    "exif-rotated-jpeg": (_exif_rotated(), None),
}


def test_the_bomb_is_a_few_kilobytes():
    assert len(BOMB) < 200_000  # declares 900 MP, ~2.7 GB as RGB


@pytest.fixture(scope="module")
def images_run(ray_cpu, tmp_path_factory):
    """Every case of IMAGES, three copies each, in two files; labeled once."""
    root = tmp_path_factory.mktemp("images")
    names = sorted(IMAGES)
    ids = [f"{n}/{c}" for c in range(3) for n in names]
    blobs = [IMAGES[n][0] for c in range(3) for n in names]
    half = len(ids) // 2
    for i, sl in enumerate((slice(0, half), slice(half, None))):
        table = pa.table({"id": ids[sl], "image": pa.array(blobs[sl], pa.binary())})
        pq.write_table(table, _mk(root / "in") / f"f{i}.parquet", row_group_size=8)
    out = root / "out"
    summary = run_classify(config(str(root / "in"), out, max_rows_per_shard=8))
    return summary, read_output(out), ids, out


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("case", sorted(IMAGES))
def test_each_bad_or_odd_image_gets_a_label_or_its_reason(images_run, case):
    _, table, _, _ = images_run
    rows = [r for r in table.to_pylist() if r["id"].startswith(case + "/")]
    assert len(rows) == 3, rows
    reason = IMAGES[case][1]
    for row in rows:
        if reason is None:
            assert row["error"] is None, row["error"]
            assert row["pred_label"] is not None and 0 < row["pred_score"] <= 1
        else:
            assert row["error"].split(":", 1)[0] == reason, row["error"]
            assert row["pred_label"] is None and row["pred_topk_labels"] is None


def test_every_image_row_comes_out_exactly_once_and_the_job_finishes(images_run):
    summary, table, ids, out = images_run
    assert sorted(table.column("id").to_pylist()) == sorted(ids)
    assert summary.rows == len(ids) == summary.rows_total
    bad = sum(3 for _, reason in IMAGES.values() if reason)
    assert summary.error_rows == bad
    assert summary.errors_by_reason == {
        "empty": 3, "truncated": 6, "not_an_image": 6, "too_many_pixels": 3,
    }
    assert (out / "_SUCCESS").is_file()


# ---- rows --------------------------------------------------------------------------------

HF = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
GOOD = synthetic.encode(synthetic.render_image(1, 0, 48)[0])
# (id, image struct) ; the image struct is {bytes, path} or None
ROWS = [
    ("a", {"bytes": GOOD, "path": None}),
    ("null-image", None),
    (None, {"bytes": GOOD, "path": None}),
    ("dup", {"bytes": GOOD, "path": None}),
    ("dup", {"bytes": b"", "path": None}),
    ("missing-object", {"bytes": None, "path": "no/such/image.jpg"}),
    ("dup", {"bytes": GOOD, "path": None}),
]


@pytest.fixture(scope="module")
def rows_run(ray_cpu, tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    table = pa.table({"id": pa.array([r[0] for r in ROWS], pa.string()),
                      "image": pa.array([r[1] for r in ROWS], HF)})
    pq.write_table(table, _mk(root / "in") / "rows.parquet", row_group_size=4)
    out = root / "out"
    summary = run_classify(config(str(root / "in"), out, max_rows_per_shard=4))
    return summary, read_output(out).to_pylist()


def test_one_output_row_per_input_row_even_with_duplicate_and_null_ids(rows_run):
    summary, rows = rows_run
    assert len(rows) == len(ROWS) == summary.rows
    assert [r["id"] for r in rows].count("dup") == 3
    # a null id falls back to the derived "file#row" id
    assert "rows.parquet#2" in [r["id"] for r in rows]


def test_the_summary_reports_duplicate_ids(rows_run):
    summary, _ = rows_run
    assert summary.duplicate_ids == 2  # three rows share "dup": two are duplicates
    assert "duplicate ids: 2" in summary.render()


@pytest.mark.parametrize(
    ("row_id", "reason"),
    [("a", None), ("null-image", "null_image"), ("rows.parquet#2", None),
     ("missing-object", "missing_object")],
)
def test_each_odd_row_gets_a_label_or_its_reason(rows_run, row_id, reason):
    _, rows = rows_run
    (row,) = [r for r in rows if r["id"] == row_id]
    if reason is None:
        assert row["error"] is None and row["pred_label"] is not None
    else:
        assert row["error"].startswith(reason + ":"), row["error"]
        assert row["pred_label"] is None
    if row_id == "missing-object":
        assert "no/such/image.jpg" in row["error"]


def test_duplicate_id_rows_keep_their_own_results(rows_run):
    _, rows = rows_run
    dups = [r for r in rows if r["id"] == "dup"]
    assert [r["error"] is None for r in dups] == [True, False, True]  # input order kept


# ---- files -------------------------------------------------------------------------------

def _good_table(n: int = 10) -> pa.Table:
    return pa.table({"id": [f"g{i}" for i in range(n)], "image": pa.array([GOOD] * n, pa.binary())})


def _write_bad(path: Path, case: str) -> None:
    if case == "not-parquet":
        path.write_text("id,image\n1,cat.jpg\n")
    elif case == "wrong-schema":
        pq.write_table(pa.table({"name": ["x"], "size": [3]}), path)
    elif case == "empty":
        pq.write_table(_good_table(0), path)
    elif case == "corrupted-footer":
        buf = pa.BufferOutputStream()
        pq.write_table(_good_table(), buf)
        data = buf.getvalue().to_pybytes()
        footer = int.from_bytes(data[-8:-4], "little")  # a truncated upload's garbage footer
        garbage = np.random.default_rng(0).bytes(footer)
        path.write_bytes(data[: -8 - footer] + garbage + data[-8:])
    else:
        raise AssertionError(case)


FILE_CASES = {
    "not-parquet": "not a Parquet file",
    "wrong-schema": "image",
    "empty": "0 rows",
    "corrupted-footer": "footer",
}


@pytest.fixture
def corpus_with_bad_file(tmp_path, request) -> tuple[str, str]:
    case = request.param
    root = _mk(tmp_path / "in")
    pq.write_table(_good_table(), root / "a-good.parquet")
    _write_bad(root / f"b-{case}.parquet", case)
    return str(root), case


@pytest.mark.parametrize("corpus_with_bad_file", sorted(FILE_CASES), indirect=True)
def test_a_bad_file_is_refused_by_name_before_any_work(corpus_with_bad_file, tmp_path):
    corpus, case = corpus_with_bad_file
    out = tmp_path / "out"
    with pytest.raises(InvalidInput) as info:
        run_classify(config(corpus, out))  # planning precedes Ray: no cluster needed
    assert info.value.exit_code == 2
    message = str(info.value)
    assert f"b-{case}.parquet" in message and FILE_CASES[case] in message, message
    assert "skip" in message  # the way out is named
    assert not part_files(out)


@pytest.fixture(scope="module")
def skipped_run(ray_cpu, tmp_path_factory):
    root = tmp_path_factory.mktemp("skip")
    corpus = _mk(root / "in")
    pq.write_table(_good_table(), corpus / "a-good.parquet")
    for case in FILE_CASES:
        _write_bad(corpus / f"b-{case}.parquet", case)
    out = root / "out"
    summary = run_classify(config(str(corpus), out, skip_bad_files=True))
    return summary, read_output(out)


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_skip_bad_files_lists_each_skipped_file(skipped_run, case):
    summary, _ = skipped_run
    (why,) = [w for f, w in summary.skipped_files if f.endswith(f"b-{case}.parquet")]
    assert FILE_CASES[case] in why
    assert f"b-{case}.parquet" in summary.render()


def test_skip_bad_files_labels_the_good_files(skipped_run):
    summary, table = skipped_run
    assert table.num_rows == summary.rows == 10 and len(summary.skipped_files) == len(FILE_CASES)


@pytest.mark.slow
def test_cli_exits_2_on_a_corrupted_footer_and_writes_nothing(tmp_path):
    root = _mk(tmp_path / "in")
    pq.write_table(_good_table(), root / "a-good.parquet")
    _write_bad(root / "b-corrupted-footer.parquet", "corrupted-footer")
    out = tmp_path / "out"
    result = cli("classify", str(root), str(out), "--model", "demo_cnn", "--random-weights", "--no-progress")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "b-corrupted-footer.parquet" in result.stderr and "--skip-bad-files" in result.stderr
    assert not part_files(out) and not (out / "_SUCCESS").exists()


# ---- model files -------------------------------------------------------------------------

def _weights(tmp_path: Path, case: str) -> tuple[ModelSource, str]:
    from safetensors.torch import save_file

    from ironsight.cluster.models import ModelSource as Src

    net = Src(name="demo_cnn", random_weights=True).load("cpu").module[1]
    path = tmp_path / "w.safetensors"
    if case == "wrong-architecture":
        save_file(net.state_dict(), path)
        return Src(name="resnet18", weights=str(path)), "resnet18"
    if case == "pickle-refused-by-weights-only":
        import argparse

        path = tmp_path / "w.pt"
        torch.save({"state_dict": net.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
        return Src(name="demo_cnn", weights=str(path)), "w.pt"
    if case == "truncated-safetensors":
        save_file(net.state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return Src(name="demo_cnn", weights=str(path)), "w.safetensors"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["wrong-architecture", "pickle-refused-by-weights-only", "truncated-safetensors"])
def test_a_bad_model_file_fails_before_any_actor_starts(ray_cpu, tmp_path, case):
    source, named = _weights(tmp_path, case)
    corpus = _mk(tmp_path / "in")
    pq.write_table(_good_table(), corpus / "a.parquet")
    before = len(predictor_actors())
    out = tmp_path / "out"
    with pytest.raises(InvalidInput) as info:
        run_classify(config(str(corpus), out, source=source))
    assert info.value.exit_code == 2
    assert named in str(info.value), str(info.value)
    assert len(predictor_actors()) == before
    assert not part_files(out)
