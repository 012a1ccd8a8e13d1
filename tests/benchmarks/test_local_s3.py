"""benchmarks/local_s3.py: the one moto launcher and environment patch of the benchmarks and of
tests/conftest.py (``s3_server``, ``moto_process``)."""

from __future__ import annotations

import doctest
import os
import socket
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import local_s3  # noqa: E402


def test_its_examples_run():
    failed, tried = doctest.testmod(local_s3)
    assert tried >= 3 and failed == 0


def test_patched_environ_puts_every_variable_back_also_when_the_block_raises(monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "prod")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(KeyError), local_s3.patched_environ(local_s3.moto_env("http://127.0.0.1:1"),
                                                           unset=local_s3.AWS_OVERRIDES):
        assert "AWS_PROFILE" not in os.environ  # it would win over the fake keys
        assert os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
        assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
        raise KeyError("the block fails")
    assert os.environ["AWS_PROFILE"] == "prod" and os.environ["AWS_DEFAULT_REGION"] == "eu-central-1"
    assert "AWS_ENDPOINT_URL" not in os.environ and "AWS_ACCESS_KEY_ID" not in os.environ


def test_moto_server_serves_s3_in_its_own_process_with_its_settings_and_stops_after():
    import boto3
    import botocore.exceptions

    # one request without checks, then signatures and IAM policies are checked: the setting
    # reaches the server's process, not this one
    with local_s3.moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "1"}) as endpoint:
        assert "INITIAL_NO_AUTH_ACTION_COUNT" not in os.environ
        with local_s3.patched_environ(local_s3.moto_env(endpoint), unset=local_s3.AWS_OVERRIDES):
            s3 = boto3.client("s3", endpoint_url=endpoint)
            s3.create_bucket(Bucket="one")
            with pytest.raises(botocore.exceptions.ClientError, match="InvalidAccessKeyId|AccessDenied|Signature"):
                s3.list_buckets()
        port = int(endpoint.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
