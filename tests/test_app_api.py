"""The running app (``python app.py``) through its HTTP API, with gradio_client and raw requests."""
from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from gradio_client import Client

from core.options import SamplingOptions

pytestmark = pytest.mark.real_model

DEFAULTS = SamplingOptions().model_dump()


def send_args(message: str, **changes) -> list:
    values = {**DEFAULTS, "stop": "", "seed": None, **changes}
    return [message, "", *[values[k] for k in SamplingOptions.model_fields]]


@pytest.fixture(scope="module")
def client(running_app) -> Client:
    running_app.wait_model_ready()
    return running_app.client()


def test_chat_endpoint_streams_a_reply(client):
    job = client.submit(*send_args("Name a fruit.", max_tokens=24), api_name="/send")
    updates = list(job)
    display = job.outputs()[-1][0]
    assert len(updates) >= 2
    reply = display[-1]["content"]
    reply_text = reply if isinstance(reply, str) else "".join(p["text"] for p in reply)
    assert display[-1]["role"] == "assistant" and "tok/s" in reply_text


@pytest.mark.parametrize("bad", [
    dict(temperature=99.0), dict(top_k=-1), dict(max_tokens=10**9),
    dict(stop="\n".join(f"s{i}" for i in range(20))), dict(stop="x" * 200), dict(seed=-4),
])
def test_out_of_range_parameters_are_rejected_server_side(client, bad):
    with pytest.raises(Exception) as err:
        client.predict(*send_args("hi", **bad), api_name="/send")
    assert any(word in str(err.value) for word in ("Invalid sampling options", "maximum", "minimum")), err.value


def test_unknown_or_traversal_model_names_are_rejected(client):
    for name in ("../../../etc/passwd", "/etc/passwd", "models/../../x.gguf"):
        with pytest.raises(Exception, match="Unknown model"):
            client.predict(name, None, None, "f16", True, None, 512, api_name="/load_model")


def test_bad_files_give_clear_errors_and_the_app_keeps_serving(client, running_app, bad_models):
    cases = {"truncated.gguf": "truncated", "notes.gguf": "not a GGUF file",
             "escape-template.gguf": "blocked by the sandbox", "missing-tensor.gguf": "not found"}
    for name, expected in cases.items():
        status = client.predict(name, 1024, None, "f16", True, None, 512, api_name="/load_model")
        assert expected in status, status
    assert not bad_models["canary"].exists()
    status = client.predict("SmolLM2-135M-Instruct Q4_1 (embedded)", 2048, None, "f16", True, None, 512,
                            api_name="/load_model")
    assert "Ready" in status
    assert client.predict(*send_args("Hi!", max_tokens=8), api_name="/send")[0][-1]["role"] == "assistant"


def test_client_disconnect_stops_the_generation(client, running_app):
    base = running_app.url + "gradio_api"
    config = httpx.get(running_app.url + "config").json()
    fn_index = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "send")
    session = uuid.uuid4().hex[:12]
    data = [*send_args("Write a very long story about the sea.", max_tokens=3000)[:1], None,
            *send_args("", max_tokens=3000)[1:]]
    httpx.post(f"{base}/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                           "event_data": None, "trigger_id": None}).raise_for_status()
    chunks = 0
    with httpx.stream("GET", f"{base}/queue/data", params={"session_hash": session}, timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_generating":
                chunks += 1
                if chunks >= 4:
                    break
    disconnected = time.monotonic()
    while client.predict(api_name="/model_status")["generating"]:
        assert time.monotonic() - disconnected < 2.0, "generation still running 2 s after the disconnect"
        time.sleep(0.05)
