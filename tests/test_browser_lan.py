"""A real browser logging in over a network address (127.0.0.2: loopback, as every test's traffic
must be, but not the 127.0.0.1 the app binds by default), then chatting."""
from __future__ import annotations

import time

import pytest

from tests.conftest import ARTIFACTS, start_app

pytestmark = [pytest.mark.browser, pytest.mark.real_model]


def test_login_over_the_lan_address_then_chat(tmp_path, chromium):
    app = start_app(["--listen", "--auth", "alice:correct-horse-1", "--ctx", "2048"], tmp_path)
    try:
        page = chromium.new_page(viewport={"width": 1300, "height": 900})
        url = f"http://127.0.0.2:{app.port}/"
        page.goto(url)
        # Gradio's login page first: nothing of the app before logging in.
        page.wait_for_selector("input[type=password]", timeout=20000)
        assert page.locator("#message").count() == 0
        page.locator("input").first.fill("alice")
        page.locator("input[type=password]").fill("wrong-password")
        page.get_by_role("button", name="Login").click()
        page.wait_for_timeout(1000)
        assert page.locator("#message").count() == 0
        page.locator("input").first.fill("alice")
        page.locator("input[type=password]").fill("correct-horse-1")
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#message textarea", timeout=20000)
        deadline = time.monotonic() + 60
        while "Ready" not in page.inner_text("#model-status") and time.monotonic() < deadline:
            time.sleep(0.3)
        page.click("#sampling-accordion")
        page.fill("#sampling-max_tokens input", "40")  # a short reply: only the round trip is tested here
        page.fill("#message textarea", "Say hello.")
        page.click("#send")
        page.wait_for_function("() => { const b = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
                               " return b.length && b[b.length - 1].innerText.includes('tok/s'); }", timeout=60000)
        page.click("#share-accordion")
        page.wait_for_selector("#share-panel img", timeout=10000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-lan-login.png"), full_page=True)
    finally:
        app.stop()
