"""ironsight.cluster.storage_errors sorts object-store errors: what no retry fixes fails at once, with
the fix named; throttling and 5xx are retried within the budget, each retry logged.

Every error here is a real one, as pyarrow raises it: from the moto S3 server (a missing
bucket; an IAM-checking moto in its own process for rejected keys and denied access), from a
host that does not resolve (``.invalid`` is reserved, RFC 6761), and from a small HTTP server
that answers every request with a chosen S3 error, counting the requests it gets.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
import uuid

import pytest

from ironsight.cluster import storage, storage_errors
from ironsight.cluster.errors import InvalidInput, JobFailed
from ironsight.cluster.storage_errors import StorageError
from tests.conftest import moto_process


class _S3Errors(http.server.BaseHTTPRequestHandler):
    """Answers every request with ``status`` and an S3 error body of ``code``; counts them."""

    status, code, hits = 503, "SlowDown", 0

    def _answer(self) -> None:
        type(self).hits += 1
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{self.code}</Code>'
                "<Message>from the test server</Message></Error>").encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def error_server(monkeypatch):
    """``set(status, code)`` -> the server's handler class (``.hits``); S3 env points at it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _S3Errors)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")

    def set_answer(status: int, code: str) -> type[_S3Errors]:
        _S3Errors.status, _S3Errors.code, _S3Errors.hits = status, code, 0
        return _S3Errors

    yield set_answer
    server.shutdown()


@pytest.fixture
def no_backoff(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(storage_errors, "_sleep", waits.append)
    return waits


@pytest.mark.parametrize("status, code", [(503, "SlowDown"), (500, "InternalError"), (429, "TooManyRequests")])
def test_throttling_and_5xx_are_retried_within_the_budget_and_logged(error_server, no_backoff, monkeypatch,
                                                                     caplog, status, code):
    handler = error_server(status, code)
    monkeypatch.setenv("IRONSIGHT_S3_MAX_ATTEMPTS", "4")
    with caplog.at_level(logging.DEBUG, logger="ironsight.storage"), pytest.raises(JobFailed) as info:
        storage.list_files(storage.resolve("s3://bucket/in/*.parquet"))
    assert handler.hits == 4  # one request per attempt: the SDK itself retries nothing
    assert str(info.value).startswith("listing s3://bucket/in/*.parquet failed after 4 attempts: ")
    assert "Request ID" not in str(info.value)
    assert len(no_backoff) == 3
    assert [0.5, 1, 2] <= [round(w, 6) for w in no_backoff] <= [1.0, 1.5, 2.5]  # doubling + jitter
    retries = [r.getMessage() for r in caplog.records if r.name == "ironsight.storage"]
    assert len(retries) == 3 and all("retrying in" in m for m in retries), retries
    assert retries[0].startswith("listing s3://bucket/in/*.parquet: attempt 1 of 4 failed (")


def test_default_budget_is_eight_attempts(error_server, no_backoff, monkeypatch):
    handler = error_server(503, "SlowDown")
    monkeypatch.delenv("IRONSIGHT_S3_MAX_ATTEMPTS", raising=False)
    with pytest.raises(JobFailed, match="failed after 8 attempts"):
        storage.read_bytes(storage.resolve("s3://bucket/k"))
    assert handler.hits == 8
    assert sum(no_backoff) <= 0.5 + 1 + 2 + 4 + 8 + 8 + 8 + 7 * 0.5  # about 32 s at most


@pytest.mark.parametrize("status, code, message", [
    (403, "AccessDenied", "access denied to s3://bucket/in: check the credentials' permissions"),
    (400, "InvalidArgument", "reading s3://bucket/in failed: the object store refused the request (HTTP 400)"),
])
def test_permanent_http_errors_are_not_retried(error_server, no_backoff, status, code, message):
    handler = error_server(status, code)
    started = time.monotonic()
    with pytest.raises((StorageError, JobFailed)) as info:
        storage.list_files(storage.resolve("s3://bucket/in"))
    assert str(info.value).startswith(message), str(info.value)
    assert handler.hits == 1 and no_backoff == []
    assert time.monotonic() - started < 5


def test_forbidden_without_any_credentials_says_none_were_found(error_server, no_backoff, monkeypatch, tmp_path):
    handler = error_server(403, "AccessDenied")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError) as info:
        storage.read_bytes(storage.resolve("s3://bucket/k"))
    assert str(info.value).startswith("no credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile")
    assert info.value.exit_code == 2 and handler.hits == 1 and no_backoff == []


def test_a_missing_bucket_is_named_at_once(s3_server, no_backoff):
    bucket = f"typo-{uuid.uuid4().hex[:8]}"
    for uri in (f"s3://{bucket}/in", f"s3://{bucket}/in/*.parquet"):
        with pytest.raises(StorageError) as info:
            storage.list_files(storage.resolve(uri))
        assert str(info.value) == f"no such bucket {bucket!r} at endpoint {s3_server}: check the bucket name"
    with pytest.raises(StorageError, match=f"no such bucket {bucket!r}"):
        storage.publish_bytes(storage.resolve(f"s3://{bucket}/out/x"), b"1")
    assert no_backoff == []


def test_an_existing_empty_prefix_is_still_just_empty(s3_bucket):
    assert storage.list_files(storage.resolve(f"{s3_bucket}/nothing-here")) == []
    with pytest.raises(InvalidInput, match="matches no files"):
        storage.check_input(f"{s3_bucket}/nothing-here")


def test_an_endpoint_host_that_does_not_resolve_fails_at_once(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://no-such-host.invalid")
    monkeypatch.delenv("IRONSIGHT_S3_MAX_ATTEMPTS", raising=False)
    started = time.monotonic()  # real backoff: a single retry would wait 0.5 s or more
    with pytest.raises(StorageError) as info:
        storage.list_files(storage.resolve("s3://bucket/in"))
    assert time.monotonic() - started < 0.5
    assert str(info.value).startswith(
        "the endpoint host no-such-host.invalid does not resolve: check AWS_ENDPOINT_URL")
    assert info.value.exit_code == 2


def test_a_refused_connection_is_retried_then_fails_clearly(s3_server, no_backoff, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("IRONSIGHT_S3_MAX_ATTEMPTS", "3")
    with pytest.raises(JobFailed, match=r"reading s3://bucket/k failed after 3 attempts: .*NETWORK_CONNECTION"):
        storage.read_bytes(storage.resolve("s3://bucket/k"))
    assert len(no_backoff) == 2


def test_local_permanent_errors_are_not_retried(tmp_path, no_backoff):
    calls = []

    def denied():
        calls.append(1)
        raise PermissionError(13, "Permission denied", str(tmp_path / "f"))

    with pytest.raises(JobFailed, match=r"^reading f failed: permission denied \("):
        storage_errors.with_retries(denied, what="reading f")
    assert calls == [1] and no_backoff == []


def test_a_bad_attempts_setting_is_refused(monkeypatch):
    monkeypatch.setenv("IRONSIGHT_S3_MAX_ATTEMPTS", "ten")
    with pytest.raises(InvalidInput, match="IRONSIGHT_S3_MAX_ATTEMPTS='ten' is not a whole number"):
        storage_errors.with_retries(lambda: 1, what="x")


# ---- credentials checked by a moto server with IAM auth on, in its own process -----------

@pytest.fixture(scope="module")
def iam_s3():
    """A moto server that checks signatures and IAM policies (after 3 unchecked set-up calls).

    Yields ``(endpoint, bucket, (key_id, secret))`` of an IAM user with no policy at all.
    """
    import boto3

    with moto_process(no_auth_calls=3) as endpoint:
        kw = {"endpoint_url": endpoint, "aws_access_key_id": "setup", "aws_secret_access_key": "setup",
              "region_name": "us-east-1"}
        boto3.client("s3", **kw).create_bucket(Bucket="guarded")  # unchecked call 1
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="nobody")  # 2
        key = iam.create_access_key(UserName="nobody")["AccessKey"]  # 3; from now on, checked
        yield endpoint, "guarded", (key["AccessKeyId"], key["SecretAccessKey"])


def _use(monkeypatch, endpoint: str, key_id: str, secret: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)


def test_an_unknown_access_key_is_rejected_at_once(iam_s3, monkeypatch, no_backoff):
    endpoint, bucket, _ = iam_s3
    _use(monkeypatch, endpoint, "AKIANOSUCHKEY0000000", "whatever")
    with pytest.raises(StorageError) as info:  # a HEAD's 403 has no body to tell why: both fixes
        storage.list_files(storage.resolve(f"s3://{bucket}/in"))
    assert str(info.value).startswith(f"access denied to s3://{bucket}/in: check the credentials' "
                                      "permissions, and that the key (AWS_ACCESS_KEY_ID")
    with pytest.raises(StorageError) as info:  # a listing's 403 says which it is
        storage.list_files(storage.resolve(f"s3://{bucket}/in/*.parquet"))
    text = str(info.value)
    assert text.startswith(f"the credentials were rejected by endpoint {endpoint} (INVALID_ACCESS_KEY_ID: ")
    assert "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in text and "whatever" not in text
    assert no_backoff == []


def test_a_user_without_permissions_is_denied_at_once(iam_s3, monkeypatch, no_backoff):
    endpoint, bucket, (key_id, secret) = iam_s3
    _use(monkeypatch, endpoint, key_id, secret)
    with pytest.raises(StorageError) as info:
        storage.read_bytes(storage.resolve(f"s3://{bucket}/in/a.parquet"))
    assert str(info.value).startswith(
        f"access denied to s3://{bucket}/in/a.parquet: check the credentials' permissions")
    assert secret not in str(info.value) and no_backoff == []


def test_a_wrong_secret_is_rejected_at_once(iam_s3, monkeypatch, no_backoff):
    endpoint, bucket, (key_id, _) = iam_s3
    _use(monkeypatch, endpoint, key_id, "not-the-secret")
    with pytest.raises(StorageError) as info:
        storage.list_files(storage.resolve(f"s3://{bucket}/in/*.parquet"))
    assert "SIGNATURE_DOES_NOT_MATCH" in str(info.value) or "access denied" in str(info.value)
    assert "not-the-secret" not in str(info.value) and no_backoff == []
