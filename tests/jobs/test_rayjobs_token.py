"""The Ray auth token lookup (jobs/rayjobs.py `_token`): the file RAY_AUTH_TOKEN_PATH names is
read only when it is a regular file of a token's size, and the token never reaches a message."""

from __future__ import annotations

import os
import threading

import pytest

from ironsight.cluster.errors import InvalidInput
from ironsight.jobs import rayjobs


@pytest.fixture
def env(monkeypatch):
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_token_file_is_read_and_stripped(env, tmp_path):
    (tmp_path / "t").write_text("s3cr3t-token\n")
    env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert rayjobs._token() == "s3cr3t-token"


def test_the_environment_token_wins_over_the_file(env, tmp_path):
    env.setenv("RAY_AUTH_TOKEN", "from-env")
    env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "absent"))
    assert rayjobs._token() == "from-env"


def test_a_fifo_is_refused_without_blocking(env, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    env.setenv("RAY_AUTH_TOKEN_PATH", str(fifo))
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_outcome()), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "reading RAY_AUTH_TOKEN_PATH blocked on a FIFO"
    assert isinstance(result[0], InvalidInput) and "named pipe" in str(result[0])


def test_a_device_and_an_oversized_file_are_refused(env, tmp_path):
    env.setenv("RAY_AUTH_TOKEN_PATH", "/dev/zero")
    with pytest.raises(InvalidInput, match="device or kernel file"):
        rayjobs._token()
    big = tmp_path / "big"
    big.write_bytes(b"x" * (rayjobs.MAX_TOKEN_BYTES + 10))
    env.setenv("RAY_AUTH_TOKEN_PATH", str(big))
    with pytest.raises(InvalidInput, match="more than 4096 bytes") as info:
        rayjobs._token()
    assert "xxxx" not in str(info.value)


def test_missing_and_empty_files_say_what_to_do(env, tmp_path):
    env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "absent"))
    with pytest.raises(InvalidInput, match="cannot be read"):
        rayjobs._token()
    (tmp_path / "empty").write_text("  \n")
    env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "empty"))
    with pytest.raises(InvalidInput, match="is empty"):
        rayjobs._token()


def _outcome():
    try:
        return rayjobs._token()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc
