"""A real browser on the Resources tab: live values while a chat streams, the timer and the sampler
stop when the tab is left or the page is closed, and the CSV export."""
from __future__ import annotations

import re
import threading
import time

import pytest

from tests.conftest import ARTIFACTS
from tests.test_app_api import send_args
from tests.test_browser import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

LONG = "Write a very long, detailed story about a lighthouse keeper, a storm and a lost ship."


@pytest.fixture(scope="module")
def app(running_app):
    running_app.wait_model_ready()
    return running_app


class ChatLoop(threading.Thread):
    """Keeps long replies streaming through the API (as another user would) until stopped."""

    def __init__(self, app) -> None:
        super().__init__(daemon=True)
        self.client, self.done, self.replies, self.error = app.client(), threading.Event(), 0, None

    def run(self) -> None:
        try:
            while not self.done.is_set():
                self.client.predict(*send_args(LONG, max_tokens=1500, temperature=0.8), api_name="/send")
                self.replies += 1
        except Exception as exc:  # reported by the test
            self.error = exc

    def stop(self) -> None:
        self.done.set()
        self.client.predict(api_name="/stop")


def panel_sample(page) -> int:
    match = re.search(r"Sample (\d+) at", page.inner_text("#resources-status"))
    return int(match[1]) if match else 0


def context_used(page) -> int:
    match = re.search(r"context used\s+([\d,]+)", page.inner_text("#resources-generation"))
    return int(match[1].replace(",", "")) if match else -1


def test_live_values_while_a_chat_streams_then_the_timer_stops(app, chromium):
    ARTIFACTS.mkdir(exist_ok=True)
    page = chromium.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app.url)
    page.wait_for_selector("#message textarea")
    status = app.client()
    assert status.predict(api_name="/resources_status")["ticks"] == 0  # nobody watches: nothing sampled
    chats = ChatLoop(app)
    chats.start()
    try:
        wait_for(lambda: status.predict(api_name="/model_status")["generating"], 30, "a reply to start streaming")
        page.click("#tab-resources-button")
        first = wait_for(lambda: panel_sample(page), 10, "the first sample on the panel")
        seen = [(first, page.inner_text("#resources-generation"), context_used(page))]
        deadline = time.monotonic() + 35  # while the CPU generates, the panel refreshes every 5 s
        # Two more timer ticks, and one that shows a decode speed (a tick can land on a reply's first token).
        while (len(seen) < 3 or "tokens/s" not in seen[-1][1]) and time.monotonic() < deadline:
            time.sleep(0.1)
            now = panel_sample(page)
            if now != seen[-1][0]:
                seen.append((now, page.inner_text("#resources-generation"), context_used(page)))
        assert len(seen) >= 3, f"the panel did not tick twice: {seen}"
        assert "shown every 5 s while the model generates on the CPU" in page.inner_text("#resources-status")
        assert chats.error is None, chats.error
        streaming = [s for s in seen if "generating" in s[1]]
        assert len(streaming) >= 2, f"the panel did not show the reply streaming: {seen}"
        assert len({s[2] for s in streaming}) >= 2, f"context used did not change between ticks: {seen}"
        # A tick can land on a reply's first token, whose speed is still being measured; never on a zero.
        speeds = [re.search(r"decode speed\s+(measuring…|([\d.]+) tokens/s)", s[1]) for s in streaming]
        assert all(m for m in speeds), streaming
        assert all(m[2] is None or float(m[2]) > 0 for m in speeds), streaming  # a speed, never a zero
        assert any(m[2] for m in speeds), f"no tick showed a decode speed: {streaming}"
        assert "CPU only" in page.inner_text("#resources-gauges") or page.locator("#resources-gpu0").count()
        assert "31/31 layers" in page.inner_text("#resources-placement")
        page.wait_for_selector("#resources-plot-tokens canvas, #resources-plot-tokens svg", timeout=5000)
        page.screenshot(path=str(ARTIFACTS / "browser-resources.png"), full_page=True)
    finally:
        chats.stop()
        chats.join(timeout=60)

    # The CSV export holds the samples just shown, the reply among them.
    page.click("#resources-export")
    link = page.wait_for_selector("#resources-csv a[href*='.csv']", timeout=10000)
    assert link.get_attribute("href")
    csv_text = open(status.predict(api_name="/resources_csv"), encoding="utf-8").read()
    header, *rows = csv_text.splitlines()
    assert header.startswith("time_utc,seq,") and len(rows) >= 3
    generating = header.split(",").index("generating")
    assert any(r.split(",")[generating] == "1" for r in rows)

    # Leaving the tab stops this browser's timer and, with nobody else watching, the sampler.
    page.click("#tab-chat-button")
    time.sleep(0.5)
    ticks = status.predict(api_name="/resources_status")
    time.sleep(2.5)
    after = status.predict(api_name="/resources_status")
    assert after["viewers"] == 0 and after["ticks"] == ticks["ticks"], (ticks, after)

    # Back on the tab it samples again; closing the page stops it within the lease (4 s).
    page.click("#tab-resources-button")
    wait_for(lambda: status.predict(api_name="/resources_status")["ticks"] >= after["ticks"] + 2, 10,
             "sampling to resume")
    page.close()
    time.sleep(5.0)
    closed = status.predict(api_name="/resources_status")
    time.sleep(2.0)
    final = status.predict(api_name="/resources_status")
    assert final["viewers"] == 0 and final["ticks"] == closed["ticks"], (closed, final)
