"""Allowed roots: a spec's paths and a corpus row's image paths cannot escape them.

The operator sets ``IRONSIGHT_ALLOWED_ROOTS``; a spec may narrow it with ``allowed_roots``.
Spec violations exit 2 naming the field before anything runs; an image path outside the roots
becomes an error row and is never read, while the other rows are labeled.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from ironsight.cluster import corpus, reader, storage, synthetic
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.paths import ENV_ALLOWED_ROOTS
from ironsight.cluster.pipeline import run_classify
from ironsight.jobs.spec import AuditJob, ClassifyJob
from ironsight.jobs.spec_file import load_spec
from tests.reliability.conftest import cli, config, read_output

GOOD = synthetic.encode(synthetic.render_image(1, 0, 48)[0])
HF = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.fixture
def area(tmp_path, monkeypatch) -> Path:
    """``allowed/`` is the operator's only root; ``outside/`` holds a real image next to it, and
    ``allowed/link`` is a symlink pointing at ``outside/``."""
    (tmp_path / "allowed" / "in").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "cat.jpg").write_bytes(GOOD)
    (tmp_path / "allowed" / "link").symlink_to(tmp_path / "outside")
    monkeypatch.setenv(ENV_ALLOWED_ROOTS, str(tmp_path / "allowed"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _job(**kw) -> ClassifyJob:
    kw.setdefault("input", "allowed/in")
    kw.setdefault("output", "allowed/out")
    return ClassifyJob(model="demo_cnn", random_weights=True, **kw)


def _problems(exc: pytest.ExceptionInfo) -> dict[str, str]:
    return {".".join(map(str, e["loc"])): e["msg"] for e in exc.value.errors()}


# ---- spec fields -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("field", "value"),
    [("output", "allowed/../outside/out"),            # `..` escape
     ("input", "allowed/link/in"),                     # a symlink inside pointing out
     ("output", "/etc/ironsight-out"),                 # absolute, elsewhere
     ("input", "allowed-evil/in"),                     # a sibling sharing the root's name prefix
     ("output", "s3://allowed/out")],                  # a bucket is never inside a local root
)
def test_a_path_field_outside_the_operator_roots_is_refused(area, field, value):
    with pytest.raises(ValidationError) as info:
        _job(**{field: value})
    problems = _problems(info)
    assert list(problems) == [field]
    assert value in problems[field] and str(area / "allowed") in problems[field]
    assert ENV_ALLOWED_ROOTS in problems[field]


def test_every_path_field_of_an_audit_is_checked(area):
    with pytest.raises(ValidationError) as info:
        AuditJob(input="allowed/in", output="allowed/out", model="demo_cnn",
                 weights="/opt/w.safetensors", suite="../suite.yaml",
                 baseline="allowed/../last/report.json", gate="/etc/gate.yaml")
    assert set(_problems(info)) == {"weights", "suite", "baseline", "gate"}


def test_paths_inside_the_roots_and_builtin_suites_pass(area):
    job = AuditJob(input=f"file://{area}/allowed/in", output="allowed/x/../out", model="demo_cnn",
                   weights="allowed/w.safetensors", suite="standard")
    assert job.effective_roots() == (str(area / "allowed"),)


@pytest.mark.parametrize(
    ("operator", "inside", "outside"),
    [("s3://data", "s3://data/in", "s3://data-evil/in"),          # sibling bucket
     ("s3://data/in", "s3://data/in/part", "s3://data/in-evil"),  # sibling prefix
     ("s3://data/in", "s3://data/in/x", "s3://data/in/../secret")],  # `..` in a key
)
def test_s3_roots_match_bucket_and_prefix_on_a_slash(monkeypatch, operator, inside, outside):
    monkeypatch.setenv(ENV_ALLOWED_ROOTS, f"/nowhere:{operator}")  # ':' and s3:// mix
    assert _job(input=inside, output=inside + "-out").input == inside
    with pytest.raises(ValidationError) as info:
        _job(input=inside, output=outside)
    assert list(_problems(info)) == ["output"]


def test_a_spec_cannot_widen_the_operator_roots(area):
    with pytest.raises(ValidationError) as info:
        _job(allowed_roots=[str(area / "allowed" / "in"), str(area)])
    problems = _problems(info)
    assert list(problems) == ["allowed_roots.1"] and "wider than the operator allows" in problems["allowed_roots.1"]


def test_a_spec_can_narrow_the_operator_roots(area):
    narrow = _job(allowed_roots="allowed/in,allowed/out")  # the flag's comma-separated form
    assert narrow.effective_roots() == (str(area / "allowed/in"), str(area / "allowed/out"))
    with pytest.raises(ValidationError) as info:
        _job(output="allowed/elsewhere", allowed_roots=["allowed/in", "allowed/out"])
    assert "set by allowed_roots" in _problems(info)["output"]


def test_without_roots_nothing_is_checked(monkeypatch):
    monkeypatch.delenv(ENV_ALLOWED_ROOTS, raising=False)
    job = _job(input="/etc/../anywhere", output="s3://any/where", weights=None)
    assert job.effective_roots() == ()
    # and the spec dumps (so hashes: history, scheduled submission ids) as before the field
    assert "allowed_roots" not in job.model_dump(mode="json")
    assert _job(allowed_roots=["/"]).model_dump(mode="json")["allowed_roots"] == ["/"]


def test_a_yaml_spec_names_the_field_path(area):
    spec = area / "job.yaml"
    spec.write_text(yaml.safe_dump({"kind": "classify", "input": "allowed/in", "output": "/tmp/elsewhere",
                                    "model": "demo_cnn", "random_weights": True}))
    with pytest.raises(InvalidInput) as info:
        load_spec(str(spec))
    assert str(info.value).startswith(f"{spec}: output: /tmp/elsewhere is outside the allowed roots")


def test_the_cli_exits_2_naming_the_field_and_creates_nothing(area):
    env = {**os.environ, ENV_ALLOWED_ROOTS: str(area / "allowed"), "IRONSIGHT_HOME": str(area / "home")}
    out = area / "outside" / "labels"
    result = cli("classify", str(area / "allowed" / "in"), str(out), "--model", "demo_cnn",
                 "--random-weights", "--no-progress", env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"OUTPUT: {out} is outside the allowed roots ({area / 'allowed'})" in result.stderr
    assert not out.exists() and not (area / "home").exists()


def _demo_weights(path: Path) -> None:
    from safetensors.torch import save_file

    from ironsight.cluster.models import ModelSource

    save_file(ModelSource("demo_cnn", random_weights=True).load().module[1].state_dict(), path)


@pytest.mark.parametrize("weights", ["../../outside/w.safetensors", "link/w.safetensors", "{area}/outside/w.safetensors"])
def test_weights_named_by_a_card_outside_the_roots_are_refused_before_loading(area, weights):
    _demo_weights(area / "outside" / "w.safetensors")
    card = area / "allowed" / "models" / "card.yaml"
    card.parent.mkdir()
    card.write_text(yaml.safe_dump({"name": "shapes", "format": "safetensors", "arch": "demo_cnn",
                                    "weights": weights.format(area=area)}))
    if weights.startswith("link/"):
        (card.parent / "link").symlink_to(area / "outside")
    job = ClassifyJob(input="allowed/in", output="allowed/out", model_card=str(card))
    with pytest.raises(InvalidInput, match=f"model card {card}: weights: .* is outside the allowed roots"):
        job.source().validate()
    (area / "allowed" / "w.safetensors").write_bytes((area / "outside" / "w.safetensors").read_bytes())
    card.write_text(card.read_text().replace(weights.format(area=area), "../w.safetensors"))
    assert job.source().validate().info.name == "shapes"  # inside: loads


# ---- files and image paths in the corpus --------------------------------------------------

def _rows(root: Path, paths: dict[str, str | None]) -> None:
    """One Parquet file whose image struct has bytes for None, else only a path."""
    structs = [{"bytes": GOOD, "path": None} if p is None else {"bytes": None, "path": p}
               for p in paths.values()]
    pq.write_table(pa.table({"id": list(paths), "image": pa.array(structs, HF)}),
                   root / "rows.parquet")


def _fetched(plan: corpus.CorpusPlan) -> dict[str, tuple[bytes | None, str | None]]:
    batches = [b for s in plan.shards for b in reader.iter_shard(plan, s)]
    return {i: (img, err) for b in batches for i, img, err in zip(b["id"], b["image"], b["error"], strict=True)}


def test_an_input_file_that_escapes_through_a_symlink_is_a_bad_file(area):
    inside = area / "allowed" / "in"
    _rows(inside, {"a": None})
    pq.write_table(pa.table({"id": ["b"], "image": pa.array([GOOD], pa.binary())}),
                   area / "outside" / "b.parquet")
    (inside / "sneaky.parquet").symlink_to(area / "outside" / "b.parquet")
    roots = [str(area / "allowed")]
    with pytest.raises(InvalidInput, match="sneaky.parquet: .* is outside the allowed roots"):
        corpus.plan_corpus(str(inside), allowed_roots=roots)
    plan = corpus.plan_corpus(str(inside), allowed_roots=roots, skip_bad_files=True)
    assert [Path(f).name for f in plan.files] == ["rows.parquet"]


def test_a_row_image_path_outside_the_roots_is_an_error_row_and_never_read(area):
    inside = area / "allowed" / "in"
    (area / "allowed" / "dog.jpg").write_bytes(GOOD)
    _rows(inside, {"bytes": None, "relative-inside": "../dog.jpg",
                   "dotdot": "../../outside/cat.jpg", "symlink": "../link/cat.jpg",
                   "absolute": str(area / "outside" / "cat.jpg"), "file-uri": f"file://{area}/outside/cat.jpg"})
    fetched = _fetched(corpus.plan_corpus(str(inside), allowed_roots=[str(area / "allowed")]))
    assert fetched["bytes"] == (GOOD, None) and fetched["relative-inside"] == (GOOD, None)
    for row in ("dotdot", "symlink", "absolute", "file-uri"):
        image, error = fetched[row]
        assert image is None and error.startswith("path_outside_allowed_roots: "), (row, error)
        assert str(area / "allowed") in error
    # without roots every one of them is fetched, as before
    assert all(img == GOOD for img, _ in _fetched(corpus.plan_corpus(str(inside))).values())


def test_s3_row_paths_outside_the_roots_are_error_rows(s3_bucket):
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = s3_bucket.removeprefix("s3://")
    s3.create_bucket(Bucket=bucket + "-evil")
    for key, b in (("in/dog.jpg", bucket), ("secret/cat.jpg", bucket), ("cat.jpg", bucket + "-evil")):
        s3.put_object(Bucket=b, Key=key, Body=GOOD)
    table = pa.table({"id": ["inside", "sibling-bucket", "dotdot", "relative-escape"],
                      "image": pa.array([{"bytes": None, "path": p} for p in (
                          f"{s3_bucket}/in/dog.jpg", f"{s3_bucket}-evil/cat.jpg",
                          f"{s3_bucket}/in/../secret/cat.jpg", "../secret/cat.jpg")], HF)})
    loc = storage.resolve(f"{s3_bucket}/in/rows.parquet")
    with loc.fs.open_output_stream(loc.path) as f:
        pq.write_table(table, f)
    fetched = _fetched(corpus.plan_corpus(f"{s3_bucket}/in/rows.parquet", allowed_roots=[f"{s3_bucket}/in"]))
    assert fetched["inside"] == (GOOD, None)
    for row in ("sibling-bucket", "dotdot", "relative-escape"):
        assert fetched[row][0] is None and fetched[row][1].startswith("path_outside_allowed_roots: "), row


@pytest.mark.cluster
def test_a_classify_run_labels_the_rows_inside_and_errors_the_rows_outside(ray_cpu, area):
    inside = area / "allowed" / "in"
    (area / "allowed" / "dog.jpg").write_bytes(GOOD)
    _rows(inside, {"bytes": None, "relative-inside": "../dog.jpg", "passwd": "/etc/passwd",
                   "outside": str(area / "outside" / "cat.jpg"), "symlink": "../link/cat.jpg"})
    job = _job(input=str(inside), output=str(area / "allowed" / "out"))
    summary = run_classify(config(job.input, job.output, allowed_roots=job.effective_roots()))
    rows = {r["id"]: r for r in read_output(job.output).to_pylist()}
    assert summary.rows == len(rows) == 5
    assert summary.errors_by_reason == {"path_outside_allowed_roots": 3}
    for row_id in ("bytes", "relative-inside"):
        assert rows[row_id]["error"] is None and rows[row_id]["pred_label"] is not None
    for row_id in ("passwd", "outside", "symlink"):
        assert rows[row_id]["error"].startswith("path_outside_allowed_roots: ") and rows[row_id]["pred_label"] is None
