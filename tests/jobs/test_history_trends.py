"""`ironsight history JOB --html OUT.html`: the trend page of a job's recorded runs."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from ironsight.jobs.history import HistoryStore
from ironsight.jobs.history.trends import TREND_LAST, render_trend_html

IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]

# Three audits of "nightly" with known accuracies, the gate floors recorded with the last two.
RUNS = [
    ("succeeded", 0.8125, {"fog": 0.6250, "gaussian_noise": 0.4375}, None),
    ("regressed", 0.7500, {"fog": 0.5625, "gaussian_noise": 0.3125},
     {"clean": 0.7, "conditions": {"default": 0.3, "fog": 0.55}}),
    ("gate_failed", 0.6875, {"fog": 0.5000, "gaussian_noise": 0.3750},
     {"clean": 0.7, "conditions": {"default": 0.3, "fog": 0.55}}),
]


def _record(store: HistoryStore, runs=RUNS, job: str = "nightly") -> list[int]:
    ids = []
    for status, clean, conditions, thresholds in runs:
        run_id = store.start(job=job, kind="audit", model="demo_cnn")
        metrics = {"clean_accuracy": clean, "per_condition": conditions}
        if thresholds is not None:
            metrics["gate_thresholds"] = thresholds
        store.finish(run_id, status, metrics)
        ids.append(run_id)
    return ids


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/history.db"
    return request.getfixturevalue("postgres_url")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*IRONSIGHT, *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))


def _figures(page: str) -> dict[str, str]:
    """data-series -> the figure's HTML."""
    return dict(re.findall(r'<figure data-series="([^"]+)">(.*?)</figure>', page, re.S))


def test_trend_page_has_one_plot_per_condition_the_values_and_nothing_external(url, tmp_path) -> None:
    store = HistoryStore(url)
    ids = _record(store)
    store.finish(store.start(job="nightly", kind="audit"), "failed", None, error="S3 down")
    store.finish(store.start(job="other", kind="audit"), "succeeded", {"clean_accuracy": 0.1111})
    out = tmp_path / "trend.html"
    proc = _cli("history", "nightly", "--html", str(out), "--history-db", url)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout and "3 plots" in proc.stdout
    page = out.read_text()

    figures = _figures(page)
    assert list(figures) == ["clean", "fog", "gaussian_noise"]  # clean, then each condition
    for run_id, (status, clean, conditions, _) in zip(ids, RUNS, strict=True):
        for value in (clean, *conditions.values()):
            assert f"{value:.4f}" in page
        assert re.search(rf"<tr><td>#{run_id}</td>.*{status}", page)
    assert "0.1111" not in page  # another job's run
    assert f"latest 0.6875 (run #{ids[2]})" in figures["clean"]
    assert "range 0.5000 to 0.6250 over 3 runs" in figures["fog"]
    assert "S3 down" in page  # the failed run is listed, not plotted
    assert "floor 0.55" in page and "No gate thresholds" not in page
    assert '<td class="bad">0.5000<br><small>floor 0.55</small></td>' in page  # below its floor

    # self-contained: no URL, no script, every image inline and a real PNG
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "<link" not in page and "url(" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.format == "PNG" and image.width >= 400


def test_without_recorded_thresholds_no_gate_line_is_drawn_and_the_page_says_so(tmp_path) -> None:
    store = HistoryStore(str(tmp_path / "h.db"))
    _record(store, [(s, c, p, None) for s, c, p, _ in RUNS])
    page = render_trend_html("nightly", store.runs(job="nightly"), last=TREND_LAST, source="h.db")
    assert "No gate thresholds are recorded with these runs" in page
    assert "floor" not in page.split("No gate thresholds", 1)[1]
    with_floors = HistoryStore(str(tmp_path / "f.db"))
    _record(with_floors)
    other = render_trend_html("nightly", with_floors.runs(job="nightly"), last=TREND_LAST, source="f.db")
    # the same values; the plots differ only by the gate line
    assert _figures(page)["fog"] != _figures(other)["fog"]


def test_last_n_runs_default_30(tmp_path) -> None:
    db = str(tmp_path / "h.db")
    store = HistoryStore(db)
    ids = _record(store, [("succeeded", 0.5 + i / 100, {"fog": 0.4}, None) for i in range(TREND_LAST + 2)])
    out = tmp_path / "t.html"
    from ironsight.jobs.cli import main

    assert main(["history", "--job", "nightly", "--html", str(out), "--history-db", db]) == 0
    header = re.search(r"<tr><th>accuracy</th>(.*?)</tr>", out.read_text()).group(1)
    assert re.findall(r"#(\d+)", header) == [str(i) for i in ids[-TREND_LAST:]]
    assert main(["history", "nightly", "--html", str(out), "--last", "2", "--history-db", db]) == 0
    header = re.search(r"<tr><th>accuracy</th>(.*?)</tr>", out.read_text()).group(1)
    assert re.findall(r"#(\d+)", header) == [str(i) for i in ids[-2:]]


@pytest.mark.parametrize(("args", "message"), [
    (["--html", "OUT"], "--html draws the trend of one job: name it"),
    (["ghost", "--html", "OUT"], "no runs of job 'ghost' recorded in"),
    (["nightly", "--job", "other", "--html", "OUT"], "name one job"),
    (["nightly", "--html", "OUT", "--json"], "--html and --json: choose one"),
    (["nightly", "--html", "/proc/no/such/dir/t.html"], "cannot write the trend page"),
])
def test_trend_refusals_exit_2(tmp_path, capsys, args, message) -> None:
    from ironsight.jobs.cli import main

    db = str(tmp_path / "h.db")
    _record(HistoryStore(db))
    args = [str(tmp_path / "t.html") if a == "OUT" else a for a in args]
    assert main(["history", *args, "--history-db", db]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t.html").exists()


def test_rendering_does_not_import_ray_or_torch(tmp_path) -> None:
    db = str(tmp_path / "h.db")
    _record(HistoryStore(db))
    code = (
        "import sys\n"
        "from ironsight.jobs.history import HistoryStore\n"
        "from ironsight.jobs.history.trends import write_trend_html\n"
        f"print(write_trend_html(HistoryStore({db!r}), 'nightly', {str(tmp_path / 't.html')!r}))\n"
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "[]"]
