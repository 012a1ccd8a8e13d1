"""ironsight.cluster.progress: the one progress reporter (lines in a log, records in JSON logs)."""

from __future__ import annotations

import logging

from ironsight.cluster.progress import Progress, progress, structured_logs


def test_without_a_terminal_a_line_at_the_end_and_no_carriage_returns(capsys):
    bar = progress(4, False, desc="generating", noun="images")
    bar.update(2)  # before INTERVAL_S: nothing yet
    bar.set_postfix(loss="0.1")  # a bar's extra: lines leave it out
    bar.update(2)
    bar.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\r" not in err
    assert err.startswith("[ironsight] generating: 4/4 images (100%), ")


def test_json_logs_get_the_progress_record(monkeypatch):
    class Structured(logging.Formatter):
        structured = True

    handler = logging.Handler()
    handler.setFormatter(Structured())
    records = []
    handler.emit = records.append
    root = logging.getLogger()
    root.addHandler(handler)
    monkeypatch.setattr(root, "level", logging.INFO)
    try:
        assert structured_logs()
        bar = Progress(3, False, metrics=False)
        bar.update(3, errors=1)
        bar.close()
    finally:
        root.removeHandler(handler)
    (record,) = [r for r in records if r.name == "ironsight.progress"]
    assert (record.rows_done, record.rows_total, record.error_rows) == (3, 3, 1)
    assert record.images_per_s > 0
