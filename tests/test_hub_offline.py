"""Bug 9: an unreachable Hub fails in seconds, not after huggingface_hub's ~20 s of retries, and is
remembered for a minute (the next search answers at once)."""
from __future__ import annotations

import time

import pytest

from services.hub import HubClient, HubError
from tests.conftest import free_port


def test_a_refused_hub_fails_fast_and_is_remembered(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    client = HubClient(endpoint=f"http://127.0.0.1:{free_port()}", token=False)  # nothing listens there
    started = time.monotonic()
    with pytest.raises(HubError, match="Cannot reach the Hub"):
        client.search("llama", "gguf")
    first = time.monotonic() - started
    started = time.monotonic()
    with pytest.raises(HubError, match="checked 0 s ago"):
        client.search("llama", "gguf")
    again = time.monotonic() - started
    assert first < 3.5 and again < 0.05, (first, again)
