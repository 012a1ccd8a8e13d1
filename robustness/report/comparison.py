"""The comparison's report: several models' audits and profiles side by side, and a choice.

``compare.json`` layout (``schema_version`` :data:`COMPARE_SCHEMA_VERSION`):

| key               | content                                                               |
|-------------------|-----------------------------------------------------------------------|
| ``created_at``, ``suite``, ``data``, ``versions`` | as in an audit's report.json          |
| ``models``        | the ranking rows (:func:`ranking_rows`), best first under the objective |
| ``objective``     | the objective parsed (text, sense, metric, constraints) or null        |
| ``recommendation``| winner, reason, feasible, ranked, ``excluded`` (random-weights models, |
|                   | left out when the objective or a constraint reads an accuracy); null   |
|                   | without an objective                                                   |
| ``pareto``        | per plot (``accuracy_vs_images_per_s``, ``accuracy_vs_corruption``,    |
|                   | ``accuracy_vs_memory``) the Pareto-optimal models (no other model is at |
|                   | least as good on both axes and better on one); random weights excluded |
| ``families``, ``conditions``, ``attacks`` | the columns: condition families, conditions, |
|                   | (attack, eps) cells of the suite                                       |
| ``mix``           | the suite's operating-condition mix weights, or null                   |
| ``examples``      | per model, its report.json's ``examples`` section (ids per condition)   |

A ranking row holds the objective's metrics (:mod:`ironsight.robustness.objective`:
``accuracy``, ``corruption_accuracy``, ``robust_accuracy``, ``mix_accuracy``, ``f1``,
``p50_ms``, ``p95_ms``, ``images_per_s``, ``memory_mb``, ``params_m``, ``gflops``) and
``model``, plus the table's other columns: ``random_weights``, ``accuracy_ci``,
``n_labeled``, ``precision``/``recall`` (macro, clean), ``families`` (mean accuracy per
condition family), ``per_condition`` (mean over severities), ``robust`` (accuracy per attack
and eps > 0), ``mix_ci``, ``best_batch_size``, ``memory_kind``, ``device``.
``robust_accuracy`` is the worst attack's accuracy at the suite's largest eps.

Random-weights models are measured for speed and memory only: their rows say so, every
accuracy metric of theirs is withheld from the objective, and they are left out of the
Pareto fronts. The numbers of a model are those of its own report.json, unrounded.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from ironsight.cluster.errors import InvalidInput
from ironsight.robustness.report.build import software_versions
from ironsight.robustness.report.tables import num, pct

COMPARE_SCHEMA_VERSION = "1.0"
ACCURACY_METRICS = ("accuracy", "corruption_accuracy", "robust_accuracy", "mix_accuracy", "f1")
# (key in compare.json, x metric, y metric, x higher is better)
PARETO_PLOTS = (
    ("accuracy_vs_images_per_s", "images_per_s", "accuracy", True),
    ("accuracy_vs_corruption", "accuracy", "corruption_accuracy", True),
    ("accuracy_vs_memory", "memory_mb", "accuracy", False),
)
RANDOM_MARK = "random weights: speed and memory only"


@dataclass
class CompareEntry:
    """One model of a comparison (what :func:`build_compare_report` reads).

    Attributes:
        name: unique model label.
        report: that model's audit report.json content (``jobs.audit.audit_report``).
        profile: ``ModelProfile.to_dict()``; None with ``--no-profile``.
        random_weights: measured with random weights: speed and memory only.
        mix: ``robustness.mix.expected_accuracy(...)``; None without a mix.
        examples: ``robustness.schema.Example`` objects (with ``.cam`` when computed).
    """

    name: str
    report: dict
    profile: dict | None = None
    random_weights: bool = False
    mix: dict | None = None
    examples: list = field(default_factory=list)


def _family(name: str) -> str:
    from ironsight.robustness.conditions import get_condition

    try:
        return get_condition(name).family
    except (ValueError, KeyError):
        return "other"


def _mean(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _robust(report: dict) -> tuple[dict[str, dict], float | None]:
    """Per (attack, eps > 0) cell its accuracy and interval; and the worst attack's accuracy at
    the largest eps."""
    cells = {f"{a['name']} {255 * a['eps']:.3g}/255": {"accuracy": a.get("accuracy"), "ci95": a.get("ci95")}
             for a in report.get("attacks") or [] if a["eps"] > 0}
    attacks = [a for a in report.get("attacks") or [] if a["eps"] > 0 and a.get("accuracy") is not None]
    if not attacks:
        return cells, None
    top = max(a["eps"] for a in attacks)
    return cells, min(a["accuracy"] for a in attacks if a["eps"] == top)


def ranking_rows(entries: list[CompareEntry]) -> list[dict]:
    """One row per model, in ``entries`` order (see the module docstring for the keys)."""
    rows = []
    for e in entries:
        clean, s = e.report.get("clean") or {}, e.report.get("summary") or {}
        p = e.profile or {}
        per_condition = {c["name"]: c.get("mean_accuracy") for c in s.get("per_condition") or []}
        families: dict[str, list] = {}
        for name, acc in per_condition.items():
            families.setdefault(_family(name), []).append(acc)
        robust, worst = _robust(e.report)
        flops = p.get("flops_per_image")
        rows.append({
            "model": e.name,
            "random_weights": bool(e.random_weights),
            "accuracy": clean.get("accuracy"),
            "accuracy_ci": clean.get("ci95"),
            "n_labeled": clean.get("n_labeled"),
            "precision": clean.get("macro_precision"),
            "recall": clean.get("macro_recall"),
            "f1": clean.get("macro_f1"),
            "p50_ms": p.get("latency_ms_p50"),
            "p95_ms": p.get("latency_ms_p95"),
            "images_per_s": p.get("throughput_img_s"),
            "best_batch_size": p.get("best_batch_size"),
            "memory_mb": p.get("peak_memory_mb"),
            "memory_kind": p.get("memory_kind"),
            "params_m": p["params"] / 1e6 if p.get("params") is not None else None,
            "gflops": flops / 1e9 if flops is not None else None,
            "device": p.get("device"),
            "corruption_accuracy": s.get("mean_corruption_accuracy"),
            "families": {f: _mean(v) for f, v in sorted(families.items())},
            "per_condition": per_condition,
            "robust": robust,
            "robust_accuracy": worst,
            "mix_accuracy": (e.mix or {}).get("accuracy"),
            "mix_ci": [e.mix["low"], e.mix["high"]] if e.mix and e.mix.get("low") is not None else None,
        })
    return rows


def objective_rows(rows: list[dict]) -> list[dict]:
    """``rows`` as the objective sees them: a random-weights model's accuracies are None, so
    it is infeasible for any objective or constraint on an accuracy."""
    return [{**r, **dict.fromkeys(ACCURACY_METRICS)} if r["random_weights"] else r for r in rows]


def pareto_front(rows: list[dict], x: str, y: str, *, x_higher: bool = True) -> list[str]:
    """Models no other model dominates on (x, y) (y higher is better); rows missing either
    value or with random weights are left out.

    >>> rows = [{"model": "a", "random_weights": False, "accuracy": 0.9, "images_per_s": 10.0},
    ...         {"model": "b", "random_weights": False, "accuracy": 0.8, "images_per_s": 50.0},
    ...         {"model": "c", "random_weights": False, "accuracy": 0.7, "images_per_s": 40.0}]
    >>> pareto_front(rows, "images_per_s", "accuracy")
    ['a', 'b']
    """
    pts = [(r["model"], r[x] if x_higher else -r[x], r[y]) for r in rows
           if not r["random_weights"] and r.get(x) is not None and r.get(y) is not None]
    return [m for m, px, py in pts
            if not any(qx >= px and qy >= py and (qx > px or qy > py) for _, qx, qy in pts)]


def build_compare_report(entries: list[CompareEntry], *, suite: str, data: dict, objective=None) -> dict:
    """``compare.json``'s content (see the module docstring).

    ``objective`` is a :class:`ironsight.robustness.objective.Objective` or None: without one
    there is no recommendation and the models are sorted by clean accuracy.
    """
    rows = ranking_rows(entries)
    recommendation = None
    if objective is not None:
        chosen = objective_rows(rows)
        excluded = [r["model"] for r in rows if r["random_weights"]]
        reads = {objective.metric, *(c.metric for c in objective.constraints)}
        try:
            rec = objective.choose(chosen).to_dict()
        except InvalidInput as exc:  # e.g. only random-weights models and an accuracy objective
            rec = {"winner": None, "reason": f"{exc}.", "feasible": [], "ranked": []}
        rec["excluded"] = excluded if reads & set(ACCURACY_METRICS) else []
        recommendation = rec
        order = {name: i for i, name in enumerate(rec["ranked"])}
        rows.sort(key=lambda r: (order.get(r["model"], len(order)), r["random_weights"]))
    else:
        rows.sort(key=lambda r: (r["random_weights"], -(r["accuracy"] if r["accuracy"] is not None else -1)))
    conditions = sorted({c for r in rows for c in r["per_condition"]})
    mix = next((e.mix for e in entries if e.mix), None)
    return {
        "schema_version": COMPARE_SCHEMA_VERSION,
        "kind": "compare",
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "suite": suite,
        "data": data,
        "versions": software_versions(),
        "objective": objective.to_dict() if objective is not None else None,
        "recommendation": recommendation,
        "models": rows,
        "pareto": {key: pareto_front(rows, x, y, x_higher=hi) for key, x, y, hi in PARETO_PLOTS},
        "families": sorted({f for r in rows for f in r["families"]}),
        "conditions": conditions,
        "attacks": sorted({k for r in rows for k in r["robust"]}),
        "mix": (mix or {}).get("mix"),
        "class_names": next((e.report.get("class_names") for e in entries if e.report.get("class_names")), []),
        "examples": {e.name: e.report.get("examples") for e in entries},
    }


def model_label(row: dict) -> str:
    """The model's name, marked when its weights are random."""
    return f"{row['model']} ({RANDOM_MARK})" if row["random_weights"] else row["model"]


def _acc(row: dict, key: str, ci_key: str | None = None) -> str:
    value = row.get(key)
    ci = row.get(ci_key) if ci_key else None
    if value is None:
        return "—"
    text = f"{pct(value)} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else pct(value)
    return _marked(row, text)


def _marked(row: dict, text: str) -> str:
    """A random-weights model's accuracy-like value, in parentheses: shown, never a basis for a choice."""
    return f"({text})" if row["random_weights"] and text != "—" else text


def ranking_tables(report: dict) -> list[tuple[str, list[str], list[list]]]:
    """(title, header, rows) of the comparison's tables, shared by Markdown and HTML."""
    rows = report["models"]
    tables = [("Ranking", [
        "model", "clean accuracy [95% CI]", "macro precision", "macro recall", "macro F1",
        "p50 ms", "p95 ms", "images/s (batch)", "peak memory MB", "params M", "GFLOPs",
        "mean corruption accuracy", "mix accuracy [95% CI]"],
        [[model_label(r), _acc(r, "accuracy", "accuracy_ci"), *(_marked(r, num(r[k])) for k in ("precision", "recall", "f1")),
          num(r["p50_ms"], 2), num(r["p95_ms"], 2),
          "—" if r["images_per_s"] is None else f"{r['images_per_s']:.1f} ({r['best_batch_size']})",
          num(r["memory_mb"], 1), _sig(r["params_m"]), _sig(r["gflops"]),
          _acc(r, "corruption_accuracy"), _acc(r, "mix_accuracy", "mix_ci")] for r in rows])]
    if report["families"]:
        tables.append(("Accuracy per condition family", ["model", *report["families"]],
                       [[model_label(r), *(_fam(r, f) for f in report["families"])]
                        for r in rows]))
    if report["attacks"]:
        tables.append(("Robust accuracy per attack budget", ["model", *report["attacks"]],
                       [[model_label(r), *(_cell(r, r["robust"].get(a)) for a in report["attacks"])] for r in rows]))
    if report["conditions"]:
        tables.append(("Accuracy per condition (mean over severities)", ["model", *report["conditions"]],
                       [[model_label(r), *(_fam(r, c, "per_condition") for c in report["conditions"])] for r in rows]))
    return tables


def _sig(x: float | None) -> str:
    """Three significant digits: 0.0123, 1.23, 138 (parameters and GFLOPs span five decades)."""
    return "—" if x is None else f"{x:.3g}"


def _fam(row: dict, key: str, where: str = "families") -> str:
    return _acc({"random_weights": row["random_weights"], "v": row[where].get(key)}, "v")


def _cell(row: dict, cell: dict | None) -> str:
    return _acc({"random_weights": row["random_weights"], "v": (cell or {}).get("accuracy"),
                 "ci": (cell or {}).get("ci95")}, "v", "ci")


def recommendation_lines(report: dict) -> list[str]:
    """The recommendation in sentences (objective, winner, reason, exclusions)."""
    rec, obj = report.get("recommendation"), report.get("objective")
    if obj is None:
        return ["No objective named: pass --objective, e.g. \"max accuracy s.t. p95_ms <= 20\" "
                "(docs/cli.md); the table is sorted by clean accuracy."]
    lines = [f"Objective: {obj['text']}",
             f"Recommended: {rec['winner']}" if rec["winner"] else "Recommended: none", rec["reason"]]
    if rec.get("excluded"):
        lines.append(f"Left out (random weights, accuracies meaningless): {', '.join(rec['excluded'])}")
    return lines


def header_lines(report: dict) -> list[str]:
    data = report.get("data") or {}
    lines = [f"eval set {data.get('input')}: {data.get('images')} images, suite {report['suite']}, seed "
             f"{data.get('seed')}", "intervals: 95% Wilson score interval (accuracy) and the mix's "
             "interval (robustness.mix); values in parentheses are random-weights models'"]
    if report.get("mix"):
        lines.append("operating-condition mix: " + ", ".join(f"{k} {v:.0%}" for k, v in report["mix"].items()))
    for key, x, y, _ in PARETO_PLOTS:
        if report["pareto"].get(key):
            lines.append(f"Pareto-optimal on {y} vs {x}: {', '.join(report['pareto'][key])}")
    kinds = {r.get("memory_kind") for r in report["models"] if r.get("memory_kind")}
    if kinds:
        lines.append("peak memory: " + ", ".join(sorted(kinds)) + " (cuda_max_allocated on GPU, process RSS delta on CPU)")
    return lines
