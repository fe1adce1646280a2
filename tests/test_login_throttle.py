"""Password and API-key guessing is slowed per address and per user name (issue 13, hole 3):
the growing delay as a table, then the real app in LAN mode over HTTP from two loopback addresses."""
from __future__ import annotations

import time

import httpx
import pytest

from core.login_throttle import LoginThrottle
from tests.conftest import start_app

PASSWORD = "correct-horse-battery"
KEY = "test-key-0123456789abcdef"


def test_the_delay_grows_from_1_to_30_seconds():
    throttle, now = LoginThrottle(), 1000.0
    waits = []
    for _ in range(10):
        failure = throttle.failed("10.0.0.9", "alice", now)
        waits.append(failure.wait_s)
        assert throttle.wait_s("10.0.0.9", "alice", now) == failure.wait_s
        now += failure.wait_s  # the guesser tries again as soon as allowed
    assert waits == [0, 0, 1, 2, 4, 8, 16, 30, 30, 30]  # two typos are free
    assert throttle.wait_s("10.0.0.9", "bob", now - 1) > 0  # the address itself is slowed
    assert throttle.wait_s("10.0.0.7", "alice", now) == 0  # another address may still log in
    throttle.succeeded("10.0.0.7", "alice")
    assert throttle.wait_s("10.0.0.9", "alice", now - 1) > 0  # the guesser's address stays slowed


def test_a_user_guessed_from_many_addresses_slows_each_failing_address():
    throttle, now = LoginThrottle(), 0.0
    for i in range(8):  # one try per address, as a botnet would
        throttle.failed(f"10.0.1.{i}", "alice", now)
    # An address that failed once is held back by alice's record (8 failures: 30 s), not by its own.
    assert throttle.wait_s("10.0.1.0", "alice", now + 2) > 20
    assert throttle.wait_s("10.0.2.1", "alice", now) == 0


def test_records_expire_and_stay_bounded():
    throttle = LoginThrottle(forget_s=60, max_entries=100)
    for i in range(1000):
        throttle.failed(f"10.1.{i // 256}.{i % 256}", f"user{i}", 0.0)
    assert len(throttle._addresses) <= 100 and len(throttle._users) <= 100
    throttle.failed("10.9.9.9", "zed", 0.0)
    assert throttle.wait_s("10.9.9.9", "zed", 61.0) == 0


def _client(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


@pytest.fixture(scope="module")
def lan_app(tmp_path_factory):
    data = tmp_path_factory.mktemp("throttle")
    (data / "keys.txt").write_text(KEY + "\n")
    app = start_app(["--listen", "--auth", f"alice:{PASSWORD}", "--api-key-file", str(data / "keys.txt"),
                     "--no-default-model"], data)
    yield app
    app.stop()


def test_password_guessing_is_slowed_and_logged_without_the_secret(lan_app):
    login = lan_app.url + "login"
    guesser = _client("127.0.0.1")
    codes, started = [], time.monotonic()
    for i in range(20):
        codes.append(guesser.post(login, data={"username": "alice", "password": f"guess-{i}"}).status_code)
    elapsed = time.monotonic() - started
    checked = codes.count(400)
    assert set(codes) <= {400, 429} and checked <= 4 + int(elapsed), (codes, elapsed)  # was 20 checks
    refused = guesser.post(login, data={"username": "alice", "password": PASSWORD})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    # The right password works at once from another address.
    assert _client("127.0.0.2").post(login, data={"username": "alice", "password": PASSWORD}).status_code == 200
    # And from the guesser's address once its delay has passed.
    time.sleep(int(refused.headers["retry-after"]) + 0.2)
    assert guesser.post(login, data={"username": "alice", "password": PASSWORD}).status_code == 200
    output = lan_app.output()
    assert "login failed for user 'alice' from 127.0.0.1" in output
    assert "guess-0" not in output and PASSWORD not in output


def test_api_key_guessing_is_slowed_per_address(lan_app):
    models = lan_app.url + "v1/models"
    guesser = _client("127.0.0.3")
    codes, started = [], time.monotonic()
    for i in range(20):
        codes.append(guesser.get(models, headers={"Authorization": f"Bearer wrong-key-{i:04d}-xxxxxxxx"}).status_code)
    elapsed = time.monotonic() - started
    assert set(codes) <= {401, 429} and codes.count(401) <= 4 + int(elapsed), (codes, elapsed)
    assert codes[-1] == 429 and "retry-after" in guesser.get(models).headers
    assert _client("127.0.0.4").get(models, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    output = lan_app.output()
    assert "API key check failed from 127.0.0.3" in output and "wrong-key-0000" not in output
