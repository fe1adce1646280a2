"""A real browser: start the app as the README does (``./run.sh``), chat, stop, regenerate.

Chromium is Debian's (installed by ``./run.sh test``); Playwright only drives it.
"""
from __future__ import annotations

import time

import pytest

from tests.conftest import ARTIFACTS, ROOT, start_app

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def app_from_readme(tmp_path_factory):
    app = start_app(["--ctx", "2048"], tmp_path_factory.mktemp("browser-data"), command=[str(ROOT / "run.sh")])
    app.wait_model_ready()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def page(app_from_readme):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app_from_readme.url)
        page.wait_for_selector("#message textarea")
        yield page
        browser.close()


def bot_text(page) -> str:
    bots = page.locator('#chatbot [data-testid="bot"]')
    return bots.last.inner_text() if bots.count() else ""


def stats_line(page) -> str:
    """The last reply's stats footer (its last <sub> line). Only it says "stopped": the reply's own
    words may say anything, "the storm stopped" included."""
    subs = page.locator('#chatbot [data-testid="bot"]').last.locator("sub")
    return subs.last.inner_text() if subs.count() else ""


def wait_for(predicate, timeout: float, what: str, seen=None):
    """``seen``: a callable whose value goes into the failure message (what was there instead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"; saw {seen()!r}" if seen else ""))


def test_chat_stop_and_regenerate_in_a_real_browser(page):
    ARTIFACTS.mkdir(exist_ok=True)
    wait_for(lambda: "Ready" in page.inner_text("#model-status"), 30, "the model status to say Ready")

    # Reload through the Model panel with a chosen context, as a user would.
    page.click("#model-accordion")
    box = page.locator("#load-n_ctx input, #load-n_ctx textarea").first

    def typed() -> bool:  # the page's opening event fills the panel too; what was typed must stay
        box.fill("1024")
        time.sleep(0.3)
        return box.input_value() == "1024"
    wait_for(typed, 15, "1024 to stay in the Context box", seen=box.input_value)
    page.keyboard.press("Enter")
    page.click("#load")
    wait_for(lambda: "context 1,024" in page.inner_text("#model-status"), 60, "the reload with context 1024")

    page.click("#sampling-accordion")
    page.fill("#sampling-max_tokens input", "300")
    page.fill("#message textarea", "Write a long story about a lighthouse keeper and a storm.")
    page.click("#send")

    # The reply grows as it streams.
    lengths = []
    wait_for(lambda: len(bot_text(page)) > 0, 30, "the first tokens")
    deadline = time.monotonic() + 20
    while len(set(lengths)) < 4 and time.monotonic() < deadline:
        lengths.append(len(bot_text(page)))
        time.sleep(0.1)
    growth = sorted(set(lengths))
    assert len(growth) >= 4, f"reply did not grow while streaming: {lengths}"

    # Stop mid-reply: the partial reply stays and stops growing.
    page.click("#stop")
    wait_for(lambda: stats_line(page).endswith("stopped"), 3, "the reply to stop")
    stopped = bot_text(page)
    time.sleep(1.0)
    # Read until the DOM settles: Gradio's chatbot can re-mount a message for a moment after an
    # update. Text that kept growing would never read as the stopped one again.
    wait_for(lambda: bot_text(page) == stopped, 5, f"the stopped reply to stay as it was: {stopped!r}")
    assert len(stopped) > growth[0]
    page.screenshot(path=str(ARTIFACTS / "browser-stopped.png"), full_page=True)

    # Regenerate: a fresh reply replaces the stopped one (short: a loaded CI machine decodes slowly).
    page.fill("#sampling-max_tokens input", "60")
    page.click("#regenerate")
    wait_for(lambda: "tok/s" in stats_line(page) and "stopped" not in stats_line(page), 60, "the regenerated reply",
             seen=lambda: (bot_text(page)[-300:], page.inner_text("#model-status")))
    wait_for(lambda: page.locator('#chatbot [data-testid="bot"]').count() == 1
             and page.locator('#chatbot [data-testid="user"]').count() == 1, 5,
             "one user message and one reply (the regenerated reply replaced the stopped one)")
    page.screenshot(path=str(ARTIFACTS / "browser-chat.png"), full_page=True)


def _reply_and_stats(page) -> tuple[str, str]:
    """The last reply's text and its stats line (the footer may render as <sub> or, after some
    markdown, as literal text: either way it is the last line that has "tok/s")."""
    lines = bot_text(page).rstrip().split("\n")
    if lines and "tok/s" in lines[-1]:
        return "\n".join(lines[:-1]).strip(), lines[-1]
    return "\n".join(lines).strip(), ""


def test_continue_extends_a_reply_cut_by_the_token_limit(page):
    # A new chat and greedy decoding: after the chat before it, a sampled reply was once "Count 13."
    # (5 tokens, ended by the model, not by the limit).
    page.click("#new-chat")
    wait_for(lambda: page.locator('#chatbot [data-testid="user"]').count() == 0, 10, "a new, empty chat",
             seen=lambda: (page.locator('#chatbot [data-testid="user"]').count(), page.locator("#new-chat").count(),
                           bot_text(page)[:200]))
    if not page.locator("#sampling-max_tokens input").first.is_visible():
        page.click("#sampling-accordion")
    page.fill("#sampling-temperature input", "0")
    page.fill("#sampling-max_tokens input", "8")
    page.fill("#message textarea", "Count from one to thirty in words, separated by commas.")
    users = page.locator('#chatbot [data-testid="user"]').count()
    bots = page.locator('#chatbot [data-testid="bot"]').count()
    page.click("#send")
    # The message is taken first (a round trip): wait for its bubble, or the last reply read is the old one.
    wait_for(lambda: page.locator('#chatbot [data-testid="user"]').count() > users, 30, "the message to be taken")
    # The new reply's own bubble: the reply before it may also have ended at the token limit.
    wait_for(lambda: page.locator('#chatbot [data-testid="bot"]').count() > bots
             and "max tokens" in _reply_and_stats(page)[1], 90, "the short reply",
             seen=lambda: bot_text(page)[-300:])
    n_bots = page.locator('#chatbot [data-testid="bot"]').count()
    cut, first_stats = _reply_and_stats(page)
    assert "max tokens" in first_stats and cut  # cut by the token limit
    page.click("#continue")
    wait_for(lambda: _reply_and_stats(page)[1] not in ("", first_stats), 90, "the continuation's own stats",
             seen=lambda: bot_text(page)[-300:])
    grown, _ = _reply_and_stats(page)
    assert len(grown) > len(cut) and grown.startswith(cut[:20]), (cut, grown)
    # the reply was extended in place: no new user turn, no new reply bubble
    assert page.locator('#chatbot [data-testid="bot"]').count() == n_bots
    page.screenshot(path=str(ARTIFACTS / "browser-continue.png"), full_page=True)
