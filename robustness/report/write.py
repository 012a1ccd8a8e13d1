"""Writing the reports straight to OUTPUT, a local folder or an ``s3://`` prefix.

Every file is rendered in memory first (a renderer that fails writes nothing), then each is
published whole where it belongs (:func:`ironsight.cluster.storage.publish_bytes`: locally a
temporary file beside it, fsynced and renamed; on S3 one PUT), so a reader never sees half a
file and nothing is written locally to be uploaded afterwards.

| function                  | files                                        |
|---------------------------|----------------------------------------------|
| :func:`write_reports`     | ``report.json``, ``report.md``, ``report.html`` |
| :func:`write_compare_reports` | ``compare.json``, ``compare.md``, ``compare.html`` |

A failed write raises the ``OSError`` (or :class:`~ironsight.cluster.storage_errors.StorageError`)
as it came; the job names OUTPUT in its one-line error.
"""

from __future__ import annotations

from collections.abc import Sequence

from ironsight.cluster import storage
from ironsight.robustness.report.build import dumps
from ironsight.robustness.report.html import compare_html, render_html
from ironsight.robustness.report.markdown import compare_markdown, to_markdown
from ironsight.robustness.schema import Example


def publish_texts(output: str, files: Sequence[tuple[str, str, str]]) -> dict[str, str]:
    """Each ``(key, name, text)`` of ``files`` published whole as OUTPUT/name (UTF-8); a local
    OUTPUT is created when missing. Returns ``{key: URI}`` (an absolute path locally).

    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "new")
    >>> paths = publish_texts(out, [("notes", "notes.md", "# hi")])
    >>> paths == {"notes": os.path.join(out, "notes.md")}, sorted(os.listdir(out))
    (True, ['notes.md'])
    """
    out = storage.resolve(output)
    storage.makedirs(out)
    paths = {}
    for key, name, text in files:
        target = out.join(name)
        storage.publish_bytes(target, text.encode("utf-8"))
        paths[key] = target.uri
    return paths


def write_reports(report: dict, output: str, examples: Sequence[Example] = ()) -> dict[str, str]:
    """``report.json``, ``report.md`` and ``report.html`` straight into OUTPUT.

    Args:
        report: The dict from :func:`~ironsight.robustness.report.build.build_report` (with
            ``gate`` filled or not).
        output: A local folder (created when missing) or an ``s3://`` prefix.
        examples: Images to show in the HTML report.

    Returns:
        ``{"json": uri, "markdown": uri, "html": uri}``.
    """
    return publish_texts(output, [
        ("json", "report.json", dumps(report)),
        ("markdown", "report.md", to_markdown(report)),
        ("html", "report.html", render_html(report, examples)),
    ])


def write_compare_reports(output: str, report: dict, entries) -> dict[str, str]:
    """``compare.json``, ``compare.md`` and ``compare.html`` straight into OUTPUT (a local
    folder or an ``s3://`` prefix); returns ``{"json": uri, "markdown": uri, "html": uri}``."""
    return publish_texts(output, [
        ("json", "compare.json", dumps(report)),
        ("markdown", "compare.md", compare_markdown(report)),
        ("html", "compare.html", compare_html(report, entries)),
    ])
