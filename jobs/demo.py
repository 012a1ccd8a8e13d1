"""``ironsight demo``: the whole bulk-labeling path on one machine, with data it makes itself.

1. Generate labeled shape images (:mod:`ironsight.cluster.synthetic`): an eval split and a corpus split,
   as Parquet, under ``WORKDIR/data``. Existing splits of the same size are reused.
2. Train the demo CNN on CPU (about a minute) unless a trained one is cached under
   ``$IRONSIGHT_CACHE`` (default ``~/.cache/ironsight``); it is saved as safetensors with its
   model card, and loaded back from there like any user's model.
3. Bulk-label the corpus on an embedded Ray with ``classify`` (exactly once, resumable).
4. Score the labels against the known ones and print the run summary.
5. Audit the demo model on the eval split with the ``quick`` suite and print a one-screen
   summary and where ``report.html`` is.

On a terminal steps 1-2 show tqdm bars and steps 3 and 5 a live bar; in a log (stderr not a
terminal, or ``--no-progress``) steps 1-2 print their start and end lines only, and steps 3
and 5 a progress line every 10 s. Ray's own output shows only with ``ironsight -v demo``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads

from ironsight.cluster import synthetic

TRAIN_SEED, EVAL_SEED, CORPUS_SEED = 1, 2, 3
_ROWS_PER_FILE = 2_500
_ROW_GROUP = 500


def cache_dir() -> Path:
    return Path(os.environ.get("IRONSIGHT_CACHE", Path.home() / ".cache" / "ironsight"))


def ensure_split(path: Path, n: int, seed: int, prefix: str, progress: bool) -> Path:
    """Write a labeled split unless one with exactly ``n`` rows is already there."""
    if path.is_dir():
        try:
            if pads.dataset(str(path), format="parquet").count_rows() == n:
                return path
        except Exception:  # noqa: BLE001 - a broken leftover split is simply rewritten
            pass
        for f in path.glob("*.parquet"):
            f.unlink()
    synthetic.write_corpus(
        str(path),
        n,
        seed=seed,
        rows_per_file=_ROWS_PER_FILE,
        row_group_size=_ROW_GROUP,
        prefix=f"{prefix}-",
        progress=progress,
    )
    return path


def ensure_demo_model(*, retrain: bool, train_size: int | None, progress: bool) -> Path:
    """Path of the demo model card, training the model first when none is cached."""
    from ironsight.cluster.models.demo_cnn import train_demo_model

    out = cache_dir() / "demo_cnn"
    card = out / "demo_cnn.card.yaml"
    if card.is_file() and not retrain:
        print(f"using the cached demo model: {card}")
        return card
    print("training the demo CNN on CPU (about a minute; cached for next time)...")
    kwargs = {"n_train": train_size} if train_size else {}
    started = time.monotonic()
    _, card_path, acc = train_demo_model(str(out), seed=0, progress=progress, **kwargs)
    print(f"trained in {time.monotonic() - started:.0f}s; held-out accuracy {acc:.3f}; saved {card_path}")
    return Path(card_path)


def label_accuracy(labels_dir: str, corpus_dir: str) -> tuple[float, int]:
    """Accuracy of OUTPUT's labels against the corpus's known labels, joined on id."""
    out = pads.dataset(labels_dir, format="parquet").to_table(columns=["id", "pred_label", "error"])
    truth = pads.dataset(corpus_dir, format="parquet").to_table(columns=["id", "label"])
    joined = out.join(truth, "id")
    ok = joined.filter(pc.is_null(joined["error"]))
    correct = pc.sum(pc.equal(ok["pred_label"], ok["label"])).as_py() or 0
    return (correct / ok.num_rows if ok.num_rows else 0.0), ok.num_rows


def run_demo(
    *,
    workdir: str = "ironsight-demo",
    corpus_size: int = 20_000,
    eval_size: int = 2_000,
    train_size: int | None = None,
    actors: int | None = None,
    retrain: bool = False,
    audit_images: int = 1_000,
    progress: bool | None = None,
    verbose: bool = False,
) -> int:
    from ironsight.cluster.errors import InvalidInput
    from ironsight.cluster.models import ModelSource
    from ironsight.cluster.pipeline import ClassifyConfig, run_classify
    from ironsight.cluster.raycluster import connect

    for flag, value in (("--corpus-size", corpus_size), ("--eval-size", eval_size)):
        if value < 1:
            raise InvalidInput(f"{flag} must be at least 1, got {value}")
    # tqdm bars (data generation, training) only on a terminal: in a log file their carriage
    # returns pile up on one line. Classify and the audit print a line every 10 s instead.
    show = sys.stderr.isatty() if progress is None else progress
    root = Path(workdir).resolve()
    data = root / "data"
    print(f"ironsight demo in {root}")
    print(f"generating {eval_size} eval and {corpus_size} corpus images (64 px shapes)...")
    eval_dir = ensure_split(data / "eval", eval_size, EVAL_SEED, "eval", show)
    corpus_dir = ensure_split(data / "corpus", corpus_size, CORPUS_SEED, "img", show)
    card = ensure_demo_model(retrain=retrain, train_size=train_size, progress=show)
    labels_dir = root / "labels"
    cfg = ClassifyConfig(
        input=str(corpus_dir),
        output=str(labels_dir),
        source=ModelSource(card=str(card)),
        actors=actors,
        batch_size=256,
        overwrite=True,  # a retrained model is a new spec: the demo replaces its old labels
        progress=progress,
    )
    print(f"bulk-labeling {corpus_size} images on an embedded Ray...")
    from ironsight.jobs.audit import AuditConfig, resolve_suite, run_audit
    from ironsight.robustness.report.text import text_summary

    audit_dir = root / "audit"
    with connect(None, quiet=not verbose):
        summary = run_classify(cfg)
        acc, scored = label_accuracy(str(labels_dir), str(corpus_dir))
        print(summary.render())
        print(f"accuracy against the known labels: {acc:.3f} over {scored} labeled rows")
        if audit_images > 0:
            print(f"\nauditing the demo model on {min(audit_images, eval_size)} eval images (suite: quick)...")
            result = run_audit(
                AuditConfig(
                    input=str(eval_dir),
                    output=str(audit_dir),
                    source=ModelSource(card=str(card)),
                    suite=resolve_suite("quick", None),
                    max_images=audit_images,
                    actors=actors,
                    batch_size=256,
                    progress=progress,
                )
            )
            print(text_summary(result.report))
            print(f"\nreport: {result.paths['html']}")
    return 0


COMPARE_OBJECTIVE = "max accuracy s.t. p50_ms <= 50 and params_m <= 1"  # what `ironsight demo compare` recommends by


def run_demo_compare(
    *,
    workdir: str = "ironsight-demo",
    images: int = 300,
    retrain: bool = False,
    actors: int | None = None,
    progress: bool | None = None,
    verbose: bool = False,
) -> int:
    """``ironsight demo compare``: the demo CNN and two smaller models of other shapes
    (``ironsight.cluster.models.demo_cnn.COMPARE_MODELS``), trained on CPU and cached, compared
    on ``images`` eval images with the ``quick`` suite under :data:`COMPARE_OBJECTIVE`; prints
    each model's line and where the report is."""
    from ironsight.cluster.errors import InvalidInput
    from ironsight.cluster.models import ModelSource
    from ironsight.cluster.models.demo_cnn import ensure_compare_models
    from ironsight.cluster.raycluster import connect
    from ironsight.jobs.audit import resolve_suite
    from ironsight.jobs.compare import CompareConfig, ModelEntry, plan_compare, run_compare
    from ironsight.jobs.compare_cli import summary_lines

    if images < 1:
        raise InvalidInput(f"--images must be at least 1, got {images}")
    show = sys.stderr.isatty() if progress is None else progress
    root = Path(workdir).resolve()
    print(f"ironsight demo compare in {root}")
    eval_dir = ensure_split(root / "data" / "eval-compare", images, EVAL_SEED, "eval", show)
    cards = [ensure_demo_model(retrain=retrain, train_size=None, progress=show),
             *ensure_compare_models(retrain=retrain, progress=show)]
    cfg = CompareConfig.of(
        tuple(ModelEntry(card.name.split(".")[0], ModelSource(card=str(card))) for card in cards),
        objective=COMPARE_OBJECTIVE, input=str(eval_dir), output=str(root / "compare"),
        suite=resolve_suite("quick", None), actors=actors, batch_size=256,
        progress=progress, overwrite=True,  # retrained models replace the demo's last comparison
    )
    prepared = plan_compare(cfg)
    print(f"\ncomparing {len(cards)} models on {images} eval images (suite: quick, objective: "
          f"{COMPARE_OBJECTIVE!r})...")
    with connect(None, quiet=not verbose):
        result = run_compare(cfg, prepared=prepared)
    print("\n".join(summary_lines(result)))
    return 0
