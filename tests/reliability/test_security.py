"""Security checks: no unsafe deserialisation in the source, no secret in anything a job writes."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from ironsight.cluster import synthetic
from tests.reliability.conftest import REPO, cli

SOURCE_DIRS = ("cluster", "jobs", "robustness", "benchmarks")


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    """``(dotted callee, call)`` for every call in a Python file, e.g. ``("torch.load", ...)``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
            out.append((".".join(reversed(parts)), node))
    return out


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _unsafe_pickle(name: str, call: ast.Call) -> bool:
    return name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load")


def _unsafe_torch_load(name: str, call: ast.Call) -> bool:
    if name != "torch.load":
        return False
    flag = _kw(call, "weights_only")
    return not (isinstance(flag, ast.Constant) and flag.value is True)


def _unsafe_yaml(name: str, call: ast.Call) -> bool:
    if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
        return True
    if name != "yaml.load":
        return False
    loader = _kw(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
    text = ast.unparse(loader) if loader is not None else ""
    return not text.endswith(("SafeLoader", "CSafeLoader"))


RULES = {
    "pickle.load": _unsafe_pickle,
    "torch.load without weights_only=True": _unsafe_torch_load,
    "yaml.load without SafeLoader": _unsafe_yaml,
}


def _source_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS if (REPO / d).is_dir() for p in (REPO / d).rglob("*.py"))


def test_the_source_tree_is_scanned():
    files = _source_files()
    assert len(files) > 20 and any(p.name == "weights.py" for p in files)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_no_unsafe_deserialisation_in_the_source(rule):
    check = RULES[rule]
    hits = [
        f"{p.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)[:80]}"
        for p in _source_files()
        for name, call in _calls(p)
        if check(name, call)
    ]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize(
    ("rule", "code", "flagged"),
    [
        ("pickle.load", "pickle.load(f)", True),
        ("torch.load without weights_only=True", "torch.load(p)", True),
        ("torch.load without weights_only=True", "torch.load(p, weights_only=False)", True),
        ("torch.load without weights_only=True", "torch.load(p, map_location='cpu', weights_only=True)", False),
        ("yaml.load without SafeLoader", "yaml.load(s)", True),
        ("yaml.load without SafeLoader", "yaml.load(s, Loader=yaml.FullLoader)", True),
        ("yaml.load without SafeLoader", "yaml.load(s, Loader=yaml.SafeLoader)", False),
    ],
)
def test_the_rules_flag_what_they_should(tmp_path, rule, code, flagged):
    path = tmp_path / "x.py"
    path.write_text(code + "\n")
    assert any(RULES[rule](name, call) for name, call in _calls(path)) is flagged


# ---- secrets never reach an output ---------------------------------------------------------

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "FAKEsecretKEY-3b9f1c0e-do-not-leak",
    "AWS_SESSION_TOKEN": "FAKEsessionTOKEN-81d2aa47-do-not-leak",
    "RAY_AUTH_TOKEN": "FAKErayTOKEN-5c7e09d1-do-not-leak",
}


@pytest.fixture(scope="module")
def leaky_env(s3_server) -> dict[str, str]:
    env = {**os.environ, **SECRETS, "AWS_ACCESS_KEY_ID": "testing"}
    env.pop("RAY_ADDRESS", None)
    return env


def _bucket_files(bucket: str, dest: Path) -> list[Path]:
    """Copy every object of an s3:// bucket (through the moto endpoint) into ``dest``."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    name = bucket.removeprefix("s3://")
    paths = []
    for obj in s3.list_objects_v2(Bucket=name).get("Contents", []):
        if obj["Key"].endswith("/") or obj["Size"] == 0:
            continue  # directory markers
        path = dest / obj["Key"].replace("/", "~")
        path.write_bytes(s3.get_object(Bucket=name, Key=obj["Key"])["Body"].read())
        paths.append(path)
    return paths


def _leaks(texts: dict[str, bytes]) -> list[str]:
    return [f"{secret_name} in {where}" for where, blob in texts.items()
            for secret_name, secret in SECRETS.items() if secret.encode() in blob]


@pytest.fixture(scope="module")
def classify_run(leaky_env, tmp_path_factory):
    """A classify job reading and writing S3 with the fake secrets in its environment."""
    import boto3

    bucket = "s3://secrets-classify"
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="secrets-classify")
    synthetic.write_corpus(f"{bucket}/in", 60, seed=1, rows_per_file=30, row_group_size=30, size=32)
    result = cli("classify", f"{bucket}/in", f"{bucket}/out", "--model", "demo_cnn", "--random-weights",
                 "--no-progress", env=leaky_env)
    assert result.returncode == 0, result.stderr[-3000:]
    files = _bucket_files(bucket, tmp_path_factory.mktemp("classify-out"))
    return result, files


@pytest.fixture(scope="module")
def audit_run(leaky_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    synthetic.write_corpus(str(root / "eval"), 16, seed=2, rows_per_file=16, row_group_size=16, size=32)
    result = cli("audit", str(root / "eval"), str(root / "out"), "--model", "demo_cnn", "--random-weights",
                 "--suite", "quick", "--severities", "1", "--max-images", "16", "--no-progress", env=leaky_env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, sorted(p for p in (root / "out").rglob("*") if p.is_file())


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.parametrize("job", ["classify", "audit"])
def test_no_secret_in_any_output_file_or_the_console(request, job):
    result, files = request.getfixturevalue(f"{job}_run")
    names = {p.name.rsplit("~", 1)[-1] for p in files}
    if job == "classify":
        assert {"_SUCCESS", "_manifest.json"} <= names and any(n.startswith("part-") for n in names)
    else:
        assert {"report.json", "report.html", "predictions.parquet"} <= names
    texts = {str(p): p.read_bytes() for p in files}
    texts["stdout"], texts["stderr"] = result.stdout.encode(), result.stderr.encode()
    assert not _leaks(texts)


def test_the_leak_check_would_see_a_secret():
    assert _leaks({"x": b"..." + SECRETS["RAY_AUTH_TOKEN"].encode() + b"..."}) == ["RAY_AUTH_TOKEN in x"]


# ---- a corpus path naming a file outside the corpus ------------------------------------------

@pytest.mark.cluster
def test_a_corpus_path_to_a_secret_file_never_copies_its_bytes_into_output(ray_cpu, tmp_path):
    """Path-layout corpora may name any readable file; its bytes must not reach OUTPUT."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ironsight.cluster.pipeline import run_classify
    from tests.reliability.conftest import config, read_output

    secret = tmp_path / "elsewhere" / "token"
    secret.parent.mkdir()
    secret.write_text(SECRETS["RAY_AUTH_TOKEN"] + "\n")
    corpus = tmp_path / "in"
    corpus.mkdir()
    pq.write_table(pa.table({"id": ["abs", "rel"], "image": [str(secret), "../elsewhere/token"]}),
                   corpus / "paths.parquet")
    run_classify(config(str(corpus), tmp_path / "out"))
    rows = read_output(tmp_path / "out").to_pylist()
    assert [r["error"].split(":")[0] for r in rows] == ["not_an_image", "not_an_image"]
    for row in rows:
        for secret_value in SECRETS.values():
            assert secret_value[:8] not in str(row), row
