"""Run identity and regressions that mean something (issue 12): a run is compared only with
earlier runs of what it measured, and a drop is a regression only when it is larger than allowed
AND significant (paired exact McNemar on the shared images, else non-overlapping intervals)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import synthetic
from ironsight.cluster.errors import EXIT_REGRESSED
from ironsight.jobs.history import (
    HistoryStore,
    Outcomes,
    RunRecorder,
    detect_regressions,
    run_identity,
)
from ironsight.jobs.history.schema import SCHEMA_VERSION
from ironsight.jobs.spec import AuditJob

IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]


@pytest.fixture
def store(tmp_path) -> HistoryStore:
    return HistoryStore(str(tmp_path / "history.db"))


def _spec(name: str | None = "nightly", **kw) -> AuditJob:
    values = {"input": "eval/", "output": "out/", "model": "demo_cnn", "random_weights": True, **kw}
    if name is not None:
        values["name"] = name
    return AuditJob(**values)


def _predictions(clean: list[bool], fog: list[bool] | None = None, prefix: str = "img") -> pa.Table:
    """An audit's predictions table: image i clean-correct when clean[i]; fog at severity 3."""
    rows = [(f"{prefix}{i}", "clean", "clean", 0, ok) for i, ok in enumerate(clean)]
    rows += [(f"{prefix}{i}", "corruption", "fog", 3, ok) for i, ok in enumerate(fog or [])]
    ids, kinds, conds, sevs, correct = zip(*rows, strict=True)
    return pa.table({"id": list(ids), "kind": list(kinds), "condition": list(conds),
                     "severity": pa.array(sevs, pa.int32()), "correct": list(correct)})


def _report(predictions: pa.Table) -> dict:
    """The report keys the recorder reads, consistent with `predictions`."""
    rows = predictions.to_pylist()
    clean = [r["correct"] for r in rows if r["kind"] == "clean"]
    fog = [r["correct"] for r in rows if r["condition"] == "fog"]
    per_condition = [{"name": "fog", "mean_accuracy": sum(fog) / len(fog)}] if fog else []
    return {"clean": {"accuracy": sum(clean) / len(clean)}, "attacks": [],
            "summary": {"mean_corruption_accuracy": per_condition[0]["mean_accuracy"] if fog else None,
                        "per_condition": per_condition},
            "data": {"images": len(clean), "error_rows": 0}, "model": {"weights_sha256": "w" * 64}}


def _audit(store: HistoryStore, spec: AuditJob, predictions: pa.Table) -> RunRecorder:
    """One audit through the recorder the way `run_audit` drives it: judge, then record."""
    with RunRecorder(spec, store) as rec:
        report = _report(predictions)
        report["history"] = rec.judge_audit(report, predictions)
        rec.audit_finished(report)
        rec.report = report
    return rec


def _wobble(n: int, right: int, flips: int, seed: int) -> list[bool]:
    """`right` of `n` images right, then `flips` right images turned wrong and as many wrong ones
    turned right, chosen at random: the same accuracy, different images."""
    rng = np.random.default_rng(seed)
    out = np.array([True] * right + [False] * (n - right))
    out[rng.choice(np.flatnonzero(out), flips, replace=False)] = False
    out[rng.choice(np.flatnonzero(~out), flips, replace=False)] = True
    return out.tolist()


# ---- what counts as a regression ---------------------------------------------------------


@pytest.mark.parametrize(("after", "regressed"), [
    # the model really dropped 10 points: 100 of its 900 right images are now wrong
    (lambda: [False] * 100 + [True] * 800 + [False] * 100, True),
    # a 1-point wobble: 10 right images turned wrong, a few others turned right
    (lambda: _wobble(1000, 890, 15, seed=1), False),
    # no change in accuracy, 30 images swapped both ways
    (lambda: _wobble(1000, 900, 30, seed=2), False),
])
def test_a_named_nightly_is_regressed_only_for_a_real_drop(store, after, regressed) -> None:
    first = _audit(store, _spec(), _predictions([True] * 900 + [False] * 100))
    second = _audit(store, _spec(), _predictions(after()))
    runs = store.runs()
    assert [r.status for r in runs] == ["succeeded", "regressed" if regressed else "succeeded"]
    assert second.compared_with.id == first.run_id == runs[1].compared_with
    history = second.report["history"]
    assert history["compared_with"] == first.run_id and history["judged"] is True
    assert history["identity"] == runs[0].identity == runs[1].identity
    (clean,) = [c for c in history["comparisons"] if c["metric"] == "clean accuracy"]
    assert clean["test"] == "mcnemar_exact" and clean["n"] == 1000
    if regressed:
        (r,) = history["regressions"]
        assert r["metric"] == "clean accuracy" and r["p_value"] < 1e-20
        assert "dropped from 0.9000 to 0.8000" in r["message"] and "McNemar" in r["message"]
    else:
        assert history["regressions"] == [] and clean["verdict"] == "within noise"


def test_a_4_point_drop_on_100_images_is_noise(store) -> None:
    """The user's `--seed 1` repeat on 100 images: 4 images turned wrong (p = 0.125)."""
    _audit(store, _spec(), _predictions([True] * 90 + [False] * 10))
    rec = _audit(store, _spec(seed=1), _predictions([False] * 4 + [True] * 86 + [False] * 10))
    assert rec.regressions == [] and store.runs()[-1].status == "succeeded"
    assert rec.report["history"]["compared_with"] == store.runs()[0].id  # same identity: compared


def test_a_condition_is_judged_on_its_images_too(store) -> None:
    clean = [True] * 900 + [False] * 100
    _audit(store, _spec(), _predictions(clean, fog=[True] * 600 + [False] * 400))
    rec = _audit(store, _spec(), _predictions(clean, fog=[True] * 500 + [False] * 500))
    assert [r.metric for r in rec.regressions] == ["fog mean accuracy"]
    assert rec.regressions[0].test == "mcnemar_exact"


def test_runs_on_different_images_are_compared_by_their_intervals() -> None:
    before = Outcomes.from_predictions(_predictions([True] * 900 + [False] * 100, prefix="a"))
    after = Outcomes.from_predictions(_predictions([True] * 800 + [False] * 200, prefix="b"))
    metrics = [{"clean_accuracy": 0.9, "counts": before.counts()},
               {"clean_accuracy": 0.8, "counts": after.counts()}]
    (r,) = detect_regressions(*metrics, 0.02, before, after)
    assert r.test == "wilson_overlap" and (r.before, r.after) == (0.9, 0.8)
    small = [Outcomes.from_predictions(_predictions([True] * 9 + [False], prefix="a")),
             Outcomes.from_predictions(_predictions([True] * 7 + [False] * 3, prefix="b"))]
    assert detect_regressions({"counts": small[0].counts()}, {"counts": small[1].counts()},
                              0.02, *small) == []  # 0.9 vs 0.7 on 10 images: intervals overlap


# ---- identity ------------------------------------------------------------------------------


def test_another_model_or_other_data_is_not_compared(store, tmp_path) -> None:
    good = _predictions([True] * 1000)
    bad = _predictions([False] * 1000)
    _audit(store, _spec(), good)
    for spec in (_spec(model="resnet18"), _spec(input="other-eval/"), _spec(severities=[1]),
                 _spec(suite="standard")):
        rec = _audit(store, spec, bad)
        assert rec.regressions == [] and rec.report["history"]["compared_with"] is None
    rec = _audit(store, _spec(), _predictions([True] * 10))  # 10 images, not 1,000
    assert rec.report["history"]["compared_with"] is None
    assert [r.status for r in store.runs()] == ["succeeded"] * 6
    assert len({r.identity for r in store.runs()}) == 6


def test_identity_parts_and_what_is_left_out(tmp_path) -> None:
    ident, parts = run_identity(_spec(), images=100)
    assert parts == {
        "job": "nightly", "kind": "audit", "input": os.path.realpath("eval"),
        "model": "arch:demo_cnn", "label_column": "label", "suite": "quick",
        "severities": parts["severities"], "attacks": parts["attacks"], "images": 100,
    }
    assert len(ident) == 64
    # weights and seed are what a nightly changes: the identity stays
    (tmp_path / "w.safetensors").write_bytes(b"")
    assert run_identity(_spec(seed=5), images=100)[0] == ident
    assert run_identity(_spec(output="elsewhere/"), images=100)[0] == ident
    card = tmp_path / "card.yaml"
    card.write_text("arch: demo_cnn\n")
    assert run_identity(_spec(model=None, random_weights=False, model_card=str(card)), 100)[1][
        "model"] == f"card:{card}"


def test_an_ad_hoc_audit_is_recorded_but_never_judged(store) -> None:
    """`ironsight audit` without --name: a model that lost every image is still not `regressed`."""
    _audit(store, _spec(name=None), _predictions([True] * 1000))
    rec = _audit(store, _spec(name=None), _predictions([False] * 1000))
    assert rec.regressions == []
    assert rec.report["history"]["judged"] is False and rec.report["history"]["compared_with"] is None
    runs = store.runs()
    assert [(r.job, r.status, r.judged) for r in runs] == [("audit", "succeeded", False)] * 2
    # nor is an ad-hoc run the reference of a job that names itself "audit"
    rec = _audit(store, _spec(name="audit"), _predictions([False] * 1000))
    assert rec.report["history"]["judged"] is True and rec.report["history"]["compared_with"] is None


def test_only_the_reference_keeps_its_per_image_outcomes(store) -> None:
    ids = [_audit(store, _spec(), _predictions([True] * 90 + [False] * 10)).run_id for _ in range(3)]
    assert [store.outcomes(i) is not None for i in ids] == [False, False, True]
    # a regressed run keeps none and does not replace the reference
    bad = _audit(store, _spec(), _predictions([False] * 100))
    assert store.runs()[-1].status == "regressed" and store.outcomes(bad.run_id) is None
    assert store.outcomes(ids[-1]) is not None


def test_a_schema_2_database_gets_identity_columns_and_the_outcomes_table(tmp_path) -> None:
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
CREATE TABLE ironsight_meta (key VARCHAR(64) NOT NULL, value VARCHAR(256) NOT NULL, PRIMARY KEY (key));
CREATE TABLE ironsight_runs (id INTEGER NOT NULL, job VARCHAR(256) NOT NULL, kind VARCHAR(32) NOT NULL,
  spec_hash VARCHAR(64), model VARCHAR(256), weights_hash VARCHAR(64), scheduled_for DATETIME,
  started_at DATETIME NOT NULL, ended_at DATETIME, status VARCHAR(16) NOT NULL, output TEXT,
  metrics JSON, error TEXT, host VARCHAR(256), pid INTEGER, process_start VARCHAR(128), PRIMARY KEY (id));
INSERT INTO ironsight_meta VALUES ('schema_version', '2');
INSERT INTO ironsight_runs (job, kind, started_at, ended_at, status, metrics, host)
  VALUES ('nightly', 'audit', '2026-01-02 03:04:05', '2026-01-02 03:05:05', 'succeeded',
          '{"clean_accuracy": 1.0}', 'h');
""")
    store = HistoryStore(str(path))
    assert store.schema_version == SCHEMA_VERSION == 3
    (old,) = store.runs()
    assert (old.identity, old.compared_with) == (None, None)
    # the old row has no identity: it is never the reference of a new run
    rec = _audit(store, _spec(), _predictions([False] * 100))
    assert rec.report["history"]["compared_with"] is None and store.runs()[-1].status == "succeeded"


def test_unreadable_stored_outcomes_fall_back_to_the_counts(store) -> None:
    first = _audit(store, _spec(), _predictions([True] * 900 + [False] * 100))
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE ironsight_outcomes SET data = x'00' WHERE run_id = ?", (first.run_id,))
    rec = _audit(store, _spec(), _predictions([True] * 700 + [False] * 300))
    assert [r.test for r in rec.regressions] == ["wilson_overlap"]


# ---- the `history` listing and the CLI -----------------------------------------------------


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*IRONSIGHT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_history_shows_identity_and_compared_with(store) -> None:
    first = _audit(store, _spec(), _predictions([True] * 900 + [False] * 100))
    second = _audit(store, _spec(), _predictions([True] * 800 + [False] * 200))
    adhoc = _audit(store, _spec(name=None), _predictions([True] * 10))
    proc = _cli("history", "--history-db", store.url)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert "identity" in header and "vs run" in header
    cells = [row.split() for row in rows]
    short = store.runs()[0].identity[:8]
    assert cells[0][3] == short and "none" in cells[0]  # first of its identity
    assert cells[1][3] == short and str(first.run_id) in cells[1][cells[1].index("regressed"):]
    assert cells[2][3] == adhoc.identity[:8] != short and "ad" in cells[2] and "hoc" in cells[2]
    listed = json.loads(_cli("history", "--history-db", store.url, "--json").stdout)
    assert [r["compared_with"] for r in listed] == [None, first.run_id, None]
    assert listed[1]["identity"] == second.identity and listed[1]["identity_parts"]["images"] == 1000


def _relabel(corpus: Path, labels) -> None:
    """Give every image of `corpus` the label `labels(pred)` of the random demo_cnn's prediction."""
    import torch

    from ironsight.cluster.decode import decode_rows
    from ironsight.cluster.models import ModelSource

    loaded = ModelSource("demo_cnn", random_weights=True).load("cpu")
    for f in sorted(corpus.glob("*.parquet")):
        table = pq.read_table(f)
        images, errors = decode_rows(table["image"].to_pylist(), [None] * table.num_rows,
                                     loaded.info.preprocess)
        assert not any(errors)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode():
            predicted = loaded.module(x).argmax(dim=1).tolist()
        column = pa.array([labels(p) for p in predicted], table.schema.field("label").type)
        pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", column), f)


SUITE = "name: tiny\nconditions: [gaussian_noise]\nseverities: [1]\nattacks: []\n"


@pytest.mark.cluster  # two real audits on an embedded Ray: 30-90 s on 2 busy cores
def test_audits_of_two_models_without_a_name_both_exit_0(tmp_path) -> None:
    """The new user's report: model A (every image right), then model B on other data (none
    right). Judged by job name alone this exited 4; ad-hoc audits are never judged."""
    db = str(tmp_path / "history.db")
    (tmp_path / "suite.yaml").write_text(SUITE)
    for name, seed in (("a", 2), ("b", 3)):
        synthetic.write_corpus(str(tmp_path / name), 16, seed=seed, rows_per_file=16, row_group_size=16)
    _relabel(tmp_path / "a", lambda p: p)  # demo_cnn (random weights) gets all 16 right
    _relabel(tmp_path / "b", lambda p: 999)  # squeezenet (random weights): a class it does not pick
    common = ["--suite", str(tmp_path / "suite.yaml"), "--no-progress", "--actors", "1", "--batch-size", "16"]
    env = {"IRONSIGHT_HISTORY_URL": db}
    a = _cli("audit", str(tmp_path / "a"), str(tmp_path / "out-a"), "--model", "demo_cnn",
             "--random-weights", *common, env=env)
    assert a.returncode == 0, a.stderr[-3000:]
    b = _cli("audit", str(tmp_path / "b"), str(tmp_path / "out-b"), "--model", "squeezenet1_1",
             "--random-weights", *common, env=env)
    assert b.returncode == 0, b.stderr[-3000:]
    first, second = HistoryStore(db).runs()
    assert first.metrics["clean_accuracy"] == 1.0 and second.metrics["clean_accuracy"] < 0.5
    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert first.identity != second.identity
    report = json.loads((tmp_path / "out-b" / "report.json").read_text())
    assert report["history"]["judged"] is False and report["history"]["compared_with"] is None
    assert report["history"]["identity"] == second.identity
    assert report["history"]["identity_parts"]["model"] == "arch:squeezenet1_1"


@pytest.mark.cluster  # two real audits on an embedded Ray: 30-90 s on 2 busy cores
def test_a_named_audit_whose_model_lost_its_images_exits_4(tmp_path) -> None:
    """The wiring: run 1 of job `nightly` gets all 16 images right; the same images relabelled
    in place make run 2 get none right: paired on the 16 shared ids, exit 4."""
    db = str(tmp_path / "history.db")
    (tmp_path / "suite.yaml").write_text(SUITE)
    synthetic.write_corpus(str(tmp_path / "eval"), 16, seed=2, rows_per_file=16, row_group_size=16)
    args = ["audit", str(tmp_path / "eval"), str(tmp_path / "out"), "--name", "nightly",
            "--model", "demo_cnn", "--random-weights", "--suite", str(tmp_path / "suite.yaml"),
            "--no-progress", "--actors", "1", "--batch-size", "16"]
    env = {"IRONSIGHT_HISTORY_URL": db}
    _relabel(tmp_path / "eval", lambda p: p)
    good = _cli(*args, env=env)
    assert good.returncode == 0, good.stderr[-3000:]
    _relabel(tmp_path / "eval", lambda p: (p + 1) % 8)
    bad = _cli(*args, env=env)
    assert bad.returncode == EXIT_REGRESSED, bad.stderr[-3000:]
    first, second = HistoryStore(db).runs()
    assert (first.status, second.status) == ("succeeded", "regressed")
    assert second.compared_with == first.id and second.identity == first.identity
    assert f"last succeeded run {first.id}" in bad.stderr
    assert "clean accuracy dropped from 1.0000 to 0.0000" in bad.stderr
    assert "16 paired image results, exact McNemar" in bad.stderr
    history = json.loads((tmp_path / "out" / "report.json").read_text())["history"]
    assert history["compared_with"] == first.id and history["identity"] == first.identity
    assert {r["metric"] for r in history["regressions"]} >= {"clean accuracy"}
    table = _cli("history", "--history-db", db).stdout.splitlines()
    assert str(first.id) in table[2].split()[table[2].split().index("regressed"):]
