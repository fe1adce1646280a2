"""A real browser: add a remote engine (a real llama_cpp.server), pick its model, chat through it,
see the speed, remove it."""
from __future__ import annotations

import pytest

from tests.conftest import ARTIFACTS, start_app
from tests.remote_servers import ALIAS, SERVER_KEY
from tests.test_browser import bot_text, stats_line, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.real_model]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = start_app(["--no-default-model"], tmp_path_factory.mktemp("browser-remote"))
    yield app
    app.stop()


def test_add_pick_chat_see_speed_remove(app, server, chromium):
    ARTIFACTS.mkdir(exist_ok=True)
    page = chromium.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app.url)
    page.get_by_role("tab", name="Models").click()
    page.wait_for_selector("#remote-url textarea, #remote-url input")
    page.locator("#remote-name textarea, #remote-name input").first.fill("gpu-box")
    page.locator("#remote-url textarea, #remote-url input").first.fill(server.url)
    page.locator("#remote-key input").fill(SERVER_KEY)
    page.click("#remote-add")
    wait_for(lambda: "Added" in page.inner_text("#remote-status"), 20, "the endpoint to be added",
             seen=lambda: page.inner_text("#remote-status"))
    assert server.url in page.inner_text("#remote-table")
    assert page.locator("#remote-key input").input_value() == ""  # the key is not sent back
    assert SERVER_KEY not in page.content()

    page.click("#remote-list")
    wait_for(lambda: "serves 1 model" in page.inner_text("#remote-status"), 20, "the model list",
             seen=lambda: page.inner_text("#remote-status"))
    assert page.locator("#remote-model input").input_value() == ALIAS
    page.click("#remote-load")
    wait_for(lambda: "Ready" in page.inner_text("#remote-status"), 30, "the remote model to be ready",
             seen=lambda: page.inner_text("#remote-status"))
    assert "remote engine gpu-box" in page.inner_text("#remote-status")
    page.screenshot(path=str(ARTIFACTS / "remote-models-tab.png"), full_page=True)

    page.get_by_role("tab", name="Chat").click()
    page.fill("#message textarea", "Say hello to the dragon.")
    page.click("#send")
    wait_for(lambda: "tok/s" in stats_line(page), 60, "the reply with its speed",
             seen=lambda: (bot_text(page)[-200:], stats_line(page)))
    assert bot_text(page).strip()
    wait_for(lambda: "remote engine gpu-box" in page.inner_text("#model-status"), 10, "the chat's model status")
    page.screenshot(path=str(ARTIFACTS / "remote-chat.png"), full_page=True)

    page.get_by_role("tab", name="Models").click()
    page.click("#remote-remove")
    wait_for(lambda: "Removed" in page.inner_text("#remote-status"), 20, "the removal")
    wait_for(lambda: "No remote engines" in page.inner_text("#remote-table"), 10, "the empty table")
    assert "No model loaded" in page.inner_text("#remote-status") or "unloaded" in page.inner_text("#remote-status")
    page.close()
