"""benchmarks/audit_vs_handwritten.py at tiny sizes: both sides run the same variants, the
ratio and the corruption share follow from the timers, and the results files are written.
Timings are never asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import audit_vs_handwritten  # noqa: E402


@pytest.mark.cluster
def test_quick_run_compares_the_same_variants_side_by_side_and_writes_json_and_markdown(tmp_path):
    result = audit_vs_handwritten.main([
        "--quick", "--images", "2", "--corruptions", "gaussian_noise", "--severities", "3",
        "--eps", "0.004", "--pgd-steps", "1", "--source-px", "96",
        "--workdir", str(tmp_path / "work"), "--results", str(tmp_path / "res")])
    hand, iron = result["handwritten"], result["ironsight"]
    # clean + 1 corruption x 1 severity + FGSM and PGD at 1 eps, per image
    assert result["variants"] == 2 * 4 == hand["predictions"] == iron["predictions"]
    assert result["ratio"] == pytest.approx(iron["variants_per_s"] / hand["variants_per_s"])
    assert hand["variants_per_s"] == pytest.approx(8 / hand["seconds"]["wall"])
    assert iron["seconds"]["decode"] > 0 and iron["seconds"]["corrupt"] > 0 and iron["seconds"]["corrupt_cpu"] > 0
    assert iron["corruption_share_of_wall"] == pytest.approx(iron["seconds"]["corrupt"] / iron["seconds"]["wall"])
    assert iron["ray_cpus"] >= 1 and result["crop"] == 224
    (md,) = (tmp_path / "res").glob("audit-vs-handwritten-*.md")
    (js,) = (tmp_path / "res").glob("audit-vs-handwritten-*.json")
    assert "| handwritten (one process) |" in md.read_text() and "quick (smoke) run" in md.read_text()
    assert json.loads(js.read_text())["variants"] == 8
    # both sides' accuracies per cell, side by side (the model was trained for the run: cached)
    assert set(hand["accuracy"]) == set(iron["accuracy"]) == {"clean", "gaussian_noise/3", "fgsm/0.004000", "pgd/0.004000"}
    assert result["agreement"]["attacks"].keys() == {"fgsm/0.004000", "pgd/0.004000"}
    assert result["weights"].startswith("mobilenet_v3_small-synthetic-96px-") and result["early_stop"] is True
