"""A dropped connection in the middle of a row group: the read resumes after the rows it
already yielded (each row once), within the storage retry budget; other errors fail at once."""

import pyarrow.parquet as pq
import pytest

from ironsight.cluster import corpus, reader, storage_errors, synthetic
from ironsight.cluster.errors import JobFailed

DROPPED = OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, "
                  "Failure when receiving data from the peer")


@pytest.fixture
def plan(tmp_path, monkeypatch):
    synthetic.write_corpus(str(tmp_path / "c"), 60, rows_per_file=60, row_group_size=30)
    # Only object-store reads are resumed: treat this local file as one.
    monkeypatch.setattr(reader, "_resumable", lambda loc: True)
    return corpus.plan_corpus(str(tmp_path / "c"))


def _ids(plan) -> list[str]:
    """Every id of the corpus, read shard by shard in batches of 7 rows."""
    return [i for shard in plan.shards for b in reader.iter_shard(plan, shard, batch_rows=7) for i in b["id"]]


def _failing(monkeypatch, error: BaseException, times: int, after_batches: int = 2) -> list[int]:
    """Make the first ``times`` row-group streams raise ``error`` after ``after_batches``."""
    calls: list[int] = []
    real = pq.ParquetFile.iter_batches

    def iter_batches(self, *args, **kwargs):
        calls.append(1)
        stream = real(self, *args, **kwargs)
        if len(calls) > times:
            yield from stream
            return
        for n, batch in enumerate(stream):
            if n == after_batches:
                raise error
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
    monkeypatch.setattr(storage_errors, "backoff_sleep", lambda failures: None)
    return calls


def test_a_dropped_connection_resumes_after_the_rows_already_read(plan, monkeypatch):
    expected = _ids(plan)
    calls = _failing(monkeypatch, DROPPED, times=2)
    got = _ids(plan)
    assert got == expected and len(set(got)) == 60  # every row once, in order
    assert len(calls) == 2 + 2  # two failed streams, each resumed once (2 row groups)


def test_a_connection_that_stays_down_fails_naming_file_and_row_group(plan, monkeypatch):
    monkeypatch.setenv("IRONSIGHT_S3_MAX_ATTEMPTS", "3")
    _failing(monkeypatch, DROPPED, times=100)
    with pytest.raises(JobFailed, match=r"row group 0 failed \(after 3 attempts\): AWS Error NETWORK"):
        _ids(plan)


def test_a_corrupt_page_is_not_retried(plan, monkeypatch):
    calls = _failing(monkeypatch, OSError("Couldn't deserialize thrift: invalid page header"), times=100)
    with pytest.raises(JobFailed, match="row group 0 failed: Couldn't deserialize"):
        _ids(plan)
    assert len(calls) == 1


def test_a_local_file_is_never_reopened(tmp_path, monkeypatch):
    synthetic.write_corpus(str(tmp_path / "c"), 20, rows_per_file=20, row_group_size=20)
    local = corpus.plan_corpus(str(tmp_path / "c"))
    calls = _failing(monkeypatch, DROPPED, times=100)
    with pytest.raises(JobFailed, match=r"row group 0 failed: AWS Error"):
        _ids(local)
    assert len(calls) == 1
