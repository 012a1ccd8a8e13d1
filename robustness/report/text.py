"""The audit's one-screen summary for the terminal (``ironsight audit`` and ``demo audit`` print it)."""

from __future__ import annotations

from ironsight.robustness.report.tables import gate_lines, num, pct


def text_summary(report: dict) -> str:
    """A one-screen plain-text summary for the terminal.

    >>> r = {"model": {"name": "demo"}, "suite": "quick", "clean": {"ece": 0.05},
    ...      "summary": {"clean_accuracy": 0.9, "mean_corruption_accuracy": 0.6,
    ...                  "per_condition": [], "mce": None, "relative_mce": None,
    ...                  "alexnet": None, "warnings": []}, "attacks": [], "gate": None}
    >>> print(text_summary(r))
    Robustness audit of demo (suite quick)
      clean accuracy             90.0%   (ECE 0.050)
      mean corruption accuracy   60.0%
    """
    s = report["summary"]
    ci = report["clean"].get("ci95")
    ci_part = (
        f"  95% CI [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}], n={report['clean'].get('n_labeled')}"
        if ci
        else ""
    )
    lines = [
        f"Robustness audit of {(report.get('model') or {}).get('name', 'model')} "
        f"(suite {report['suite']})",
        f"  clean accuracy            {pct(s['clean_accuracy']):>6}   (ECE {num(report['clean']['ece'])}){ci_part}",
        f"  mean corruption accuracy  {pct(s['mean_corruption_accuracy']):>6}",
    ]
    if s.get("mce") is not None:
        lines.append(
            f"  mCE vs baseline           {num(s['mce'])}  (relative {num(s['relative_mce'])})"
        )
    if s.get("alexnet"):
        lines.append(f"  mCE vs AlexNet            {num(s['alexnet']['mce'])}")
    elif s.get("mce_reason") and report.get("conditions"):
        lines.append(f"  mCE vs AlexNet            not computed: {s['mce_reason']}")
    worst = sorted(
        (p for p in s["per_condition"] if p["mean_accuracy"] is not None),
        key=lambda p: p["mean_accuracy"],
    )[:3]
    if worst:
        lines.append(
            "  hardest conditions        "
            + ", ".join(f"{p['name']} {pct(p['mean_accuracy'])}" for p in worst)
        )
    by_attack: dict[str, dict] = {}
    for a in report["attacks"]:
        if a["name"] not in by_attack or a["eps"] > by_attack[a["name"]]["eps"]:
            by_attack[a["name"]] = a
    for name, a in sorted(by_attack.items()):
        lines.append(
            f"  {name + ' @ ' + format(a['eps'] * 255, '.1f') + '/255':<26}{pct(a['accuracy']):>6}"
        )
    lines += [f"  warning: {w}" for w in s["warnings"]]
    lines += ["  " + line for line in gate_lines(report)]
    return "\n".join(lines)
