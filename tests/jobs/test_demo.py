"""`ironsight demo` end to end, at a size a test can afford."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_generates_trains_labels_and_audits(tmp_path):
    env = {**os.environ, "IRONSIGHT_CACHE": str(tmp_path / "cache")}
    work = tmp_path / "demo"
    args = [sys.executable, "-m", "ironsight.jobs.cli", "demo", "--workdir", str(work), "--corpus-size", "300",
            "--eval-size", "120", "--train-size", "512", "--audit-images", "40", "--no-progress"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "trained in" in out and "held-out accuracy" in out
    assert "labeled 300 rows" in out
    assert "accuracy against the known labels" in out
    assert (work / "labels" / "_SUCCESS").is_file()
    assert (work / "audit" / "report.html").is_file()
    assert "report:" in out
    card = tmp_path / "cache" / "demo_cnn" / "demo_cnn.card.yaml"
    assert card.is_file() and (card.parent / "demo_cnn.safetensors").is_file()
    # a second run reuses the cached model and the finished labels
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "using the cached demo model" in again.stdout
    assert "already complete" in again.stdout
