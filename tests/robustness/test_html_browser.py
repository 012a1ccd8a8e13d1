"""report.html opened in a real headless Chromium: self-contained, no errors, plots drawn."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from ironsight.robustness.gate import evaluate_gate, parse_gate
from ironsight.robustness.report.build import build_report
from ironsight.robustness.report.write import write_reports
from ironsight.robustness.schema import Example

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
CLASS_NAMES = ["circle", "square", "triangle", "star"]
# Page facts every report page is checked for: its plots' sizes and any URL that is not data:
PAGE_JS = """
              plots: [...document.querySelectorAll('img.plot')].map(i => ({
                  w: i.getBoundingClientRect().width, h: i.getBoundingClientRect().height,
                  natural: i.naturalWidth, complete: i.complete})),
              external: [...document.querySelectorAll('[src],[href]')]
                  .map(e => e.getAttribute('src') || e.getAttribute('href'))
                  .filter(u => !u.startsWith('data:')),"""

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing; install Debian's browser with `apt-get install -y chromium`",
)


def _predictions() -> pa.Table:
    """40 images: clean, two conditions x 3 severities, one attack x 3 eps; accuracy falls."""
    rng = np.random.default_rng(0)
    n, k = 40, len(CLASS_NAMES)
    labels = rng.integers(0, k, n)
    rows = []

    def add(kind, condition, severity, eps, p_correct):
        for i in range(n):
            ok = rng.random() < p_correct
            pred = int(labels[i]) if ok else int((labels[i] + 1) % k)
            rows.append(
                {
                    "id": f"img{i}",
                    "kind": kind,
                    "condition": condition,
                    "severity": severity,
                    "eps": eps,
                    "label": int(labels[i]),
                    "prediction": pred,
                    "confidence": float(rng.uniform(0.4, 1.0)),
                    "correct": pred == int(labels[i]),
                }
            )

    add("clean", "clean", 0, 0.0, 0.9)
    for name in ("gaussian_noise", "fog"):
        for severity in (1, 3, 5):
            add("corruption", name, severity, 0.0, 0.9 - 0.15 * severity)
    for eps in (0.0, 2 / 255, 8 / 255):
        add("attack", "pgd", 0, eps, max(0.05, 0.9 - 100 * eps))
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def page_result(tmp_path_factory):
    """Render the report with a failing gate and examples; load it; collect browser events."""
    report = build_report(
        _predictions(),
        class_names=CLASS_NAMES,
        model={"name": "demo_cnn"},
        data={"path": "eval.parquet"},
        seed=0,
        suite="quick",
    )
    gate = parse_gate({"condition_accuracy_min": {"default": 0.5}})
    report["gate"] = evaluate_gate(report, gate).to_dict()
    rng = np.random.default_rng(1)
    examples = [
        Example("fog", 3, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), 1, p) for p in (1, 2)
    ]
    out = tmp_path_factory.mktemp("html")
    path = write_reports(report, str(out), examples)["html"]
    info, events = open_in_browser(
        path,
        """() => ({""" + PAGE_JS + """
              title: document.title,
              runInfo: document.querySelector('#run-info')?.innerText ?? null,
              banner: document.querySelector('#gate-banner')?.innerText ?? null,
              bannerClass: document.querySelector('#gate-banner')?.className ?? null,
              examples: [...document.querySelectorAll('.ex img')].map(i => i.naturalWidth),
            })""",
    )
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return {"info": info, "events": events, "path": path, "text": text}


def open_in_browser(path: str, script: str) -> tuple[dict, dict]:
    """Load a local page in headless Chromium; return what ``script`` (a JS function) gives and
    the events seen: console and page errors, every request and every failed one."""
    from playwright.sync_api import sync_playwright

    events = {"console_errors": [], "page_errors": [], "requests": [], "failed": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: m.type == "error" and events["console_errors"].append(m.text))
        page.on("pageerror", lambda e: events["page_errors"].append(str(e)))
        page.on("request", lambda r: events["requests"].append(r.url))
        page.on("requestfailed", lambda r: events["failed"].append(r.url))
        page.goto(f"file://{path}")
        page.wait_for_load_state("load")
        info = page.evaluate(script)
        browser.close()
    return info, events


def test_page_has_no_console_or_page_errors(page_result):
    assert page_result["events"]["console_errors"] == []
    assert page_result["events"]["page_errors"] == []


def test_page_is_self_contained(page_result):
    urls = [u for u in page_result["events"]["requests"] if not u.startswith(("data:", "file:"))]
    assert urls == []
    assert page_result["events"]["failed"] == []
    assert page_result["info"]["external"] == []
    assert "http://" not in page_result["text"] and "https://" not in page_result["text"]


def test_title_names_the_model(page_result):
    assert page_result["info"]["title"] == "Robustness audit: demo_cnn"


def test_run_info_names_model_and_data(page_result):
    assert page_result["info"]["runInfo"].startswith(
        "model demo_cnn · data eval.parquet · suite quick · seed 0 · "
    )


def test_gate_banner_shows_failed_verdict_and_reason(page_result):
    banner = page_result["info"]["banner"]
    assert "Release gate FAILED" in banner
    assert "fog severity 5: accuracy" in banner and "below the floor 0.50" in banner
    assert "fail" in page_result["info"]["bannerClass"].split()


def test_four_plots_render_with_nonzero_size(page_result):
    plots = page_result["info"]["plots"]
    assert len(plots) == 4  # severity lines, heat map, attack lines, confusion matrix
    assert all(
        p["complete"] and p["natural"] > 100 and p["w"] > 100 and p["h"] > 100 for p in plots
    )


def test_example_images_decode(page_result):
    assert page_result["info"]["examples"] == [32, 32]
