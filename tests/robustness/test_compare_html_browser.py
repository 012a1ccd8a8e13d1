"""compare.html opened in a real headless Chromium: self-contained, no errors, plots and maps drawn."""

from __future__ import annotations

import os

import pytest

from ironsight.robustness.compare_report import build_compare_report, write_compare_reports
from ironsight.robustness.objective import parse_objective
from tests.robustness.test_compare_report import make_entries
from tests.robustness.test_html_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing; install Debian's browser with `apt-get install -y chromium`",
)


@pytest.fixture(scope="module")
def page_result(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    entries = make_entries()
    report = build_compare_report(entries, suite="quick", data={"input": "eval/", "images": 40, "seed": 0},
                                  objective=parse_objective("max accuracy s.t. p95_ms <= 30"))
    path = write_compare_reports(str(tmp_path_factory.mktemp("cmp")), report, entries)["html"]
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
        info = page.evaluate(
            """() => ({
              title: document.title,
              recommendation: document.querySelector('#recommendation')?.innerText ?? null,
              plots: [...document.querySelectorAll('img.plot')].map(i => ({
                  w: i.getBoundingClientRect().width, h: i.getBoundingClientRect().height,
                  natural: i.naturalWidth, complete: i.complete})),
              maps: [...document.querySelectorAll('.ex img.cam')].map(i => i.naturalWidth),
              images: [...document.querySelectorAll('.ex img')].length,
              firstColumn: [...document.querySelectorAll('table')][0]
                  ? [...[...document.querySelectorAll('table')][0].querySelectorAll('tbody tr td:first-child')]
                      .map(td => td.innerText) : [],
              external: [...document.querySelectorAll('[src],[href]')]
                  .map(e => e.getAttribute('src') || e.getAttribute('href'))
                  .filter(u => !u.startsWith('data:')),
            })"""
        )
        browser.close()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return {"info": info, "events": events, "text": text}


def test_page_has_no_console_or_page_errors(page_result):
    assert page_result["events"]["console_errors"] == []
    assert page_result["events"]["page_errors"] == []


def test_page_is_self_contained(page_result):
    urls = [u for u in page_result["events"]["requests"] if not u.startswith(("data:", "file:"))]
    assert urls == []
    assert page_result["events"]["failed"] == []
    assert page_result["info"]["external"] == []
    assert "http://" not in page_result["text"] and "https://" not in page_result["text"]


def test_recommendation_banner_names_the_winner_and_the_excluded(page_result):
    banner = page_result["info"]["recommendation"]
    assert banner.startswith("Recommended: small")  # big's p95 is 52 ms
    assert "Left out (random weights, accuracies meaningless): rand" in banner


def test_ranking_table_marks_random_weights(page_result):
    assert page_result["info"]["firstColumn"] == [
        "small", "mid", "big", "rand (random weights: speed and memory only)"]


def test_three_pareto_plots_and_the_condition_chart_render(page_result):
    plots = page_result["info"]["plots"]
    assert len(plots) == 4
    assert all(p["complete"] and p["natural"] > 100 and p["w"] > 100 and p["h"] > 100 for p in plots)


def test_examples_show_image_and_activation_map_per_model(page_result):
    assert page_result["info"]["maps"] == [24, 24, 24, 24]
    assert page_result["info"]["images"] == 8
