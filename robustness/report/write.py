"""Writing the reports: every file rendered in memory and published whole
(:func:`ironsight.cluster.storage.publish_bytes`), so a reader never sees half a report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ironsight.cluster import storage
from ironsight.robustness.report.build import dumps
from ironsight.robustness.report.html import compare_html, render_html
from ironsight.robustness.report.markdown import compare_markdown, to_markdown
from ironsight.robustness.schema import Example


def write_reports(report: dict, out_dir: str, examples: Sequence[Example] = ()) -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and ``report.html`` into a local directory.

    Each file is written under a temporary name and renamed, so a reader never sees half
    a report.

    Args:
        report: The dict from :func:`~ironsight.robustness.report.build.build_report` (with ``gate`` filled or not).
        out_dir: Local directory, created when missing.
        examples: Images to show in the HTML report.

    Returns:
        ``{"json": path, "markdown": path, "html": path}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    contents = {
        "json": ("report.json", dumps(report)),
        "markdown": ("report.md", to_markdown(report)),
        "html": ("report.html", render_html(report, examples)),
    }
    paths = {}
    for key, (name, text) in contents.items():
        path = os.path.join(out_dir, name)
        storage.publish_bytes(storage.resolve(path), text.encode("utf-8"))  # atomic
        paths[key] = path
    return paths


def write_compare_reports(output: str, report: dict, entries) -> dict[str, str]:
    """``compare.json``, ``compare.md`` and ``compare.html`` into OUTPUT (a local folder or an
    ``s3://`` prefix), each published atomically; returns ``{"json": uri, "markdown": uri, "html": uri}``."""
    out = storage.resolve(output)
    if not out.is_s3:
        storage.makedirs(out)
    paths = {}
    for key, name, text in (("json", "compare.json", dumps(report)), ("markdown", "compare.md", compare_markdown(report)),
                            ("html", "compare.html", compare_html(report, entries))):
        target = out.join(name)
        storage.publish_bytes(target, text.encode("utf-8"))
        paths[key] = target.uri
    return paths
