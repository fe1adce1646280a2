"""Hardening, at the HTTP edge of the running app (docs/HARDENING.md lines 7-10): file-serving
probes, URL payloads, cross-origin and DNS-rebinding requests, and a LAN-mode app that answers
nothing of substance without credentials. Every request here is real and goes to a real app."""
from __future__ import annotations

import http.server
import json
import threading
import uuid
from urllib.parse import quote

import gradio as gr
import httpx
import pytest
from gradio_client import Client

from cli.origin_guard import same_origin
from tests.conftest import HARDENING_SECRET, start_app, use_hardening_app

pytestmark = pytest.mark.real_model
SECRET = HARDENING_SECRET
PASSWORD = "correct-horse-battery"
API_KEY = "hardening-key-0123456789"


@pytest.fixture(scope="module")
def app(hardening_app):
    """The app on loopback, with secrets where an attacker would look: its data folder, a Hugging Face
    token under HOME, and a file posing as a model (the shared hardening app, tests/conftest.py)."""
    return use_hardening_app(hardening_app, __name__)


def probes(path) -> list[str]:
    text = str(path)
    swapped = text.swapcase() if text.swapcase() != text else text.upper()
    return [text, quote(text, safe=""), quote(quote(text, safe=""), safe=""), swapped,
            "/../.." + text, text.replace("/", "//"), text + "::$DATA", text + "%00.png"]


@pytest.mark.parametrize("which", ["token", "data", "model"])
def test_file_route_serves_no_config_token_or_model(app, which):
    for probe in probes(app.secrets[which]):
        for route in ("gradio_api/file=", "file="):
            r = httpx.get(app.url + route + probe, timeout=10)
            assert r.status_code in (400, 403, 404), (route, probe, r.status_code)
            assert SECRET not in r.text


def test_file_route_serves_nothing_from_the_working_folder(app):
    for name in ("app.py", "requirements.txt", ".git/config", "../README.md"):
        r = httpx.get(app.url + "gradio_api/file=" + name, timeout=10)
        assert r.status_code in (400, 403, 404) and "import" not in r.text, (name, r.status_code)


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        _Recorder.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"version": 1, "messages": []}')

    def log_message(self, *args):
        pass


def _queue_call(app, api_name: str, data: list, headers: dict | None = None) -> list[dict]:
    """One event through Gradio's queue, as a browser sends it; the messages it got back."""
    config = httpx.get(app.url + "config", timeout=10).json()
    fn_index = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == api_name)
    session = uuid.uuid4().hex[:12]
    r = httpx.post(app.url + "gradio_api/queue/join", headers=headers or {}, timeout=10,
                   json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
                         "trigger_id": None})
    if r.status_code != 200:
        return [{"msg": "refused", "status": r.status_code, "body": r.text}]
    messages = []
    with httpx.stream("GET", app.url + "gradio_api/queue/data", params={"session_hash": session}, timeout=30) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                messages.append(json.loads(line[5:]))
                if messages[-1].get("msg") == "process_completed":
                    break
    return messages


def test_file_payloads_with_urls_fetch_nothing(app):
    """FileData pointing at a URL (a cloud metadata address stands in as a local server) is refused,
    and the server never receives a request."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"http://127.0.0.1:{server.server_port}/latest/meta-data/iam"
    _Recorder.hits.clear()
    try:
        for payload in ({"path": target, "meta": {"_type": "gradio.FileData"}},
                        {"path": "x.json", "url": target, "meta": {"_type": "gradio.FileData"}},
                        {"path": str(app.secrets["data"]), "meta": {"_type": "gradio.FileData"}},
                        target):
            messages = _queue_call(app, "import_chat", [payload])
            final = messages[-1]
            assert final.get("msg") == "refused" or not final.get("success", False), (payload, final)
            assert SECRET not in json.dumps(messages)
    finally:
        server.shutdown()
    assert _Recorder.hits == []


def _in_process_app(tmp_path):
    """The real app's Blocks, served from this process (so that this test sees every DNS lookup it makes)."""
    from backends.manager import ModelManager
    from core.model_catalog import ModelCatalog
    from core.settings import AppSettings
    from tests.conftest import free_port
    from ui import build_app
    from ui.context import AppContext

    settings = AppSettings(data_dir=tmp_path, load_default_model=False)
    blocks = build_app(AppContext(settings, ModelManager(), lambda: ModelCatalog(())))
    blocks.queue()
    port = free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return blocks, port


def test_public_web_addresses_in_file_payloads_are_never_fetched(tmp_path, monkeypatch):
    import socket

    from ui.uploads import REFUSED

    blocks, port = _in_process_app(tmp_path)
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def recording(host, *args, **kwargs):
        looked_up.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    try:
        local = type("Local", (), {"url": f"http://127.0.0.1:{port}/"})()
        for payload in ({"path": "https://example.com/chat.json", "meta": {"_type": "gradio.FileData"}},
                        {"path": "http://93.184.215.14/chat.json", "meta": {"_type": "gradio.FileData"}}):
            final = _queue_call(local, "import_chat", [payload])[-1]
            assert final.get("success") is False and REFUSED in json.dumps(final), final
    finally:
        monkeypatch.setattr(socket, "getaddrinfo", real)
        blocks.close()
    assert not [h for h in looked_up if h not in ("127.0.0.1", "localhost")], looked_up


def test_every_file_input_of_the_app_refuses_web_addresses(tmp_path):
    """Whatever a later change adds: any component that takes a file as an event input is ours."""
    from backends.manager import ModelManager
    from core.model_catalog import ModelCatalog
    from core.settings import AppSettings
    from ui import build_app
    from ui.context import AppContext
    from ui.uploads import MARK

    blocks = build_app(AppContext(AppSettings(data_dir=tmp_path), ModelManager(), lambda: ModelCatalog(())))
    file_types = (gr.File, gr.UploadButton, gr.Image, gr.Audio, gr.Video, gr.Gallery, gr.Model3D, gr.MultimodalTextbox)
    inputs = {id(c): c for fn in blocks.fns.values() for c in fn.inputs}
    takes_files = [c for c in inputs.values() if isinstance(c, file_types)]
    assert takes_files and all(getattr(c, MARK, False) for c in takes_files), takes_files


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example",
                                    "http://localhost:1", "file://"])
def test_cross_origin_requests_are_refused(app, origin):
    headers = {"Origin": origin}
    join = httpx.post(app.url + "gradio_api/queue/join", headers=headers, json={}, timeout=10)
    upload = httpx.post(app.url + "gradio_api/upload", headers=headers, files={"files": ("a.json", b"{}")}, timeout=10)
    api = httpx.post(app.url + "v1/chat/completions", headers=headers, timeout=10,
                     json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert (join.status_code, upload.status_code, api.status_code) == (403, 403, 403)
    assert "Cross-site request refused" in join.text


def test_same_origin_and_clients_without_origin_pass(app):
    ours = app.url.rstrip("/")
    assert httpx.get(app.url + "gradio_api/info", headers={"Origin": ours}, timeout=10).status_code == 200
    assert httpx.get(app.url + "v1/models", timeout=10).status_code == 200


def test_dns_rebinding_host_is_refused_on_loopback(app):
    r = httpx.get(app.url, headers={"Host": f"evil.example:{app.port}"}, timeout=10)
    assert r.status_code == 403 and "serves only this machine" in r.text


@pytest.mark.parametrize("origin,host,ok", [
    ("http://127.0.0.1:7860", "127.0.0.1:7860", True),
    ("http://localhost:7860", "localhost:7860", True),
    ("https://chat.example", "chat.example", True),            # 443 on both sides
    ("http://127.0.0.1:7861", "127.0.0.1:7860", False),
    ("http://127.0.0.1", "127.0.0.1:7860", False),
    ("null", "127.0.0.1:7860", False),
    ("chrome-extension://abc", "127.0.0.1:7860", False),
    ("http://[::1]:7860", "[::1]:7860", True),
    ("http://a.example:bad", "a.example", False),
])
def test_same_origin_table(origin, host, ok):
    assert same_origin(origin, host) is ok


@pytest.fixture(scope="module")
def lan_app(tmp_path_factory):
    running = start_app(["--listen", "--auth", f"alice:{PASSWORD}", "--api-key", API_KEY, "--no-default-model"],
                        tmp_path_factory.mktemp("lan-data"))
    yield running
    running.stop()


def test_lan_mode_answers_nothing_without_credentials(lan_app):
    base = lan_app.url
    # What exists, read with a login (the client logs in like the login page does).
    info = Client(base, auth=("alice", PASSWORD), verbose=False).view_api(return_format="dict", print_info=False)
    names = sorted(info["named_endpoints"])
    assert {"/send", "/load_model", "/delete_model", "/download"} <= set(names)
    config = httpx.get(base + "config", timeout=10)
    assert config.status_code in (401, 403) and not config.json().get("components")  # the login page only
    for route in ("gradio_api/info", "gradio_api/queue/status", "gradio_api/upload"):
        r = httpx.request("POST" if route.endswith("upload") else "GET", base + route, timeout=10)
        assert r.status_code in (401, 403), (route, r.status_code)
    for name in names:
        r = httpx.post(base + "gradio_api/call" + name, json={"data": []}, timeout=10)
        assert r.status_code in (401, 403), (name, r.status_code)
    for fn_index in range(60):  # every dependency index, named or not
        r = httpx.post(base + "gradio_api/queue/join", timeout=10,
                       json={"data": [], "fn_index": fn_index, "session_hash": "x" * 10})
        assert r.status_code in (401, 403), (fn_index, r.status_code)
    for method, route in (("GET", "v1/models"), ("POST", "v1/chat/completions"), ("POST", "v1/completions")):
        assert httpx.request(method, base + route, json={}, timeout=10).status_code == 401
        wrong = {"Authorization": "Bearer not-the-key-0123456789"}
        # 429 once wrong keys come faster than the throttle allows (test_login_throttle.py)
        assert httpx.request(method, base + route, json={}, headers=wrong, timeout=10).status_code in (401, 429)
