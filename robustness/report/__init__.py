"""The reports of an audit (``report.json``/``.md``/``.html``) and of a comparison
(``compare.json``/``.md``/``.html``): their content built once, their tables built once and
rendered by each format, every file written straight to OUTPUT (a local folder or ``s3://``).

| module         | what it holds                                                                  |
|----------------|--------------------------------------------------------------------------------|
| ``build``      | report.json's content (:func:`~ironsight.robustness.report.build.build_report`) and its strict JSON text (``dumps``) |
| ``comparison`` | compare.json's content (``build_compare_report``) and the comparison's tables   |
| ``tables``     | the audit's rows and sentences every renderer shares (summary, results, per class, header, gate) |
| ``markdown``   | report.md and compare.md                                                       |
| ``html``       | report.html and compare.html (self-contained pages)                            |
| ``plots``      | the pages' matplotlib plots, as PNG ``data:`` URIs                              |
| ``style``      | the CSS every HTML page shares (the history's trends page too)                  |
| ``text``       | the audit's one-screen terminal summary                                        |
| ``write``      | each file published whole at OUTPUT (``write_reports``, ``write_compare_reports``) |

Import a name from its module (``from ironsight.robustness.report.build import
build_report``); this package re-exports nothing, so loading one light module (``text`` for
the CLI's summary) does not load matplotlib.
"""
