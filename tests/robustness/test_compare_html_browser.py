"""compare.html opened in a real headless Chromium: self-contained, no errors, plots and maps drawn."""

from __future__ import annotations

import os

import pytest

from ironsight.robustness.objective import parse_objective
from ironsight.robustness.report.comparison import build_compare_report
from ironsight.robustness.report.write import write_compare_reports
from tests.robustness.test_compare_report import make_entries

# the audit page's checks, run here against compare.html (page_result below)
from tests.robustness.test_html_browser import (  # noqa: F401
    CHROMIUM,
    PAGE_JS,
    open_in_browser,
    test_page_has_no_console_or_page_errors,
    test_page_is_self_contained,
)

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing; install Debian's browser with `apt-get install -y chromium`",
)


@pytest.fixture(scope="module")
def page_result(tmp_path_factory):
    entries = make_entries()
    report = build_compare_report(entries, suite="quick", data={"input": "eval/", "images": 40, "seed": 0},
                                  objective=parse_objective("max accuracy s.t. p95_ms <= 30"))
    path = write_compare_reports(str(tmp_path_factory.mktemp("cmp")), report, entries)["html"]
    info, events = open_in_browser(
        path,
        """() => ({""" + PAGE_JS + """
              title: document.title,
              recommendation: document.querySelector('#recommendation')?.innerText ?? null,
              maps: [...document.querySelectorAll('.ex img.cam')].map(i => i.naturalWidth),
              images: [...document.querySelectorAll('.ex img')].length,
              firstColumn: [...document.querySelectorAll('table')][0]
                  ? [...[...document.querySelectorAll('table')][0].querySelectorAll('tbody tr td:first-child')]
                      .map(td => td.innerText) : [],
            })""",
    )
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return {"info": info, "events": events, "text": text}


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
