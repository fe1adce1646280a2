"""Turning network sharing on in the browser (with an admin login) and off again: the app restarts
in place, its page reloads to the login page, the one-time login file is gone, and back on this
machine only no login is asked and the network address no longer answers. 127.0.0.2 stands in
for the LAN address (loopback, as all test traffic must be, but not the 127.0.0.1 bound by default)."""
from __future__ import annotations

import re
import time

import httpx
import pytest
from gradio_client import Client

from tests.conftest import ARTIFACTS, start_app

pytestmark = [pytest.mark.browser, pytest.mark.real_model]
PASSWORD = "correct-horse-9"


def answers(url: str) -> int | None:
    try:
        return httpx.get(url + "config", timeout=2).status_code
    except httpx.HTTPError:
        return None


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_share_on_the_network_from_the_browser_then_stop(tmp_path, chromium):
    app = start_app(["--ctx", "2048"], tmp_path)
    lan = f"http://127.0.0.2:{app.port}/"
    try:
        pid = app.proc.pid
        assert answers(lan) is None  # bound to 127.0.0.1 only
        app.wait_model_ready()
        with pytest.raises(Exception, match="shorter than 8"):
            app.client().predict("alice", "short", api_name="/start_sharing")

        page = chromium.new_page(viewport={"width": 1300, "height": 900})
        page.goto(app.url)
        page.click("#share-accordion")
        page.fill("#share-user input", "alice")
        page.fill("#share-password input", PASSWORD)
        page.click("#share-start")
        # Without logins a person confirms with the code printed in the terminal (issue 13).
        code = wait_for(lambda: re.search(r"code on the app page: (\S+)", app.output()), 10, "the code").group(1)
        page.fill("#share-code input", code)
        page.click("#share-start")
        page.wait_for_selector("text=Restarting on your network", timeout=10000)
        # The page reloads by itself once the new server answers: to Gradio's login page.
        page.get_by_role("button", name="Login").wait_for(timeout=60000)
        assert app.proc.poll() is None and app.proc.pid == pid  # restarted in place
        assert answers(lan) in (401, 403)  # on the network now, behind the login
        page.locator("input").first.fill("alice")
        page.locator("input[type=password]").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#message textarea", timeout=20000)
        page.click("#share-accordion")
        page.wait_for_selector("#share-stop", timeout=10000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-share-on.png"), full_page=True)
        assert not list(tmp_path.glob(".login-once-*"))  # the one-time login file was read and deleted

        alice = Client(lan, auth=("alice", PASSWORD), verbose=False)
        wait_for(lambda: alice.predict(api_name="/model_status")["status"] == "ready", 60, "the model after the restart")
        assert "Restarting on this machine only" in alice.predict(api_name="/stop_sharing")
        wait_for(lambda: answers(lan) is None and answers(app.url) == 200, 60, "the restart on this machine")
        assert app.proc.pid == pid
        assert app.client().predict(api_name="/model_status")["status"] in ("loading", "ready")  # no login
    finally:
        app.stop()
