"""Accessibility and keyboard use in Chromium: text contrast of the main controls computed from the
page's styles (WCAG AA, 4.5:1), the message box labelled, keyboard-only send / Esc stop / new
conversation with focus back in the box, Copy without the stats footer, and the Presets table
scrolling inside its own box on a phone. Screenshots go to test-artifacts/."""
from __future__ import annotations

import pytest

from tests.conftest import ARTIFACTS
from tests.test_browser import bot_text, stats_line, wait_for
from tests.test_browser_chat_life import browser, open_page, set_max_tokens, shot  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

# Contrast of an element's text over its effective background (ancestors' fills, alpha-blended).
CONTRAST_JS = """
(el) => {
  const parse = (c) => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return [0,0,0,0];
    const p = m[1].split(',').map(x => parseFloat(x)); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const over = (top, bottom) => [0,1,2].map(i => top[i] * top[3] + bottom[i] * (1 - top[3])).concat([1]);
  const layers = [];
  for (let n = el; n; n = n.parentElement) {
    const bg = parse(getComputedStyle(n).backgroundColor);
    if (bg[3] > 0) layers.push(bg);
    if (bg[3] >= 1) break;
  }
  let bg = [255, 255, 255, 1];
  for (const layer of layers.reverse()) bg = over(layer, bg);
  const fg = over(parse(getComputedStyle(el).color), bg);
  const lum = (c) => { const v = c.slice(0,3).map(x => { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}
"""

MAIN_TEXT = {
    "Send": "#send", "Stop": "#stop", "Regenerate": "#regenerate", "New chat": "#new-chat",
    "a sampling description": "#sampling-temperature [data-testid='block-info'] + *, #sampling-temperature .info",
    "the status line": "#model-status p",
    "a label": "#system-prompt [data-testid='block-info']",
}


def test_contrast_of_the_main_controls_is_at_least_4_5(browser, app):
    page = open_page(browser, app)
    page.click("#sampling-accordion")
    checked = {}
    for name, selector in MAIN_TEXT.items():
        element = page.locator(selector).first
        if not element.count():
            continue
        checked[name] = round(element.evaluate(CONTRAST_JS), 2)
    # Descriptions: every info line under a sampling control.
    infos = page.locator("#sampling-accordion .info, #sampling-accordion [data-testid='block-info'] ~ span")
    for i in range(min(infos.count(), 3)):
        checked[f"description {i}"] = round(infos.nth(i).evaluate(CONTRAST_JS), 2)
    shot(page, "contrast")
    assert {"Send", "Stop", "New chat", "the status line"} <= set(checked), checked
    low = {k: v for k, v in checked.items() if v < 4.5}
    assert not low, f"contrast below 4.5:1: {low} (all: {checked})"
    page.context.close()


def test_keyboard_only_send_esc_stop_new_chat_and_focus(browser, app):
    page = open_page(browser, app)
    box = page.get_by_role("textbox", name="Message")  # the box is labelled for screen readers
    assert box.count() == 1
    set_max_tokens(page, 400)
    box.focus()
    page.keyboard.type("Write a long story about a lighthouse.")
    page.keyboard.press("Enter")
    wait_for(lambda: len(bot_text(page)) > 10, 30, "the reply to stream")
    page.keyboard.press("Escape")
    wait_for(lambda: stats_line(page).endswith("stopped"), 10, "Esc to stop the reply", seen=lambda: stats_line(page))
    wait_for(lambda: page.evaluate("document.activeElement === document.querySelector('#message textarea')"), 3,
             "focus still in the message box after Enter", seen=lambda: page.evaluate("document.activeElement.outerHTML.slice(0, 120)"))
    page.keyboard.press("Control+Shift+O")
    wait_for(lambda: page.locator('#chatbot [data-testid="user"]').count() == 0, 5, "a new conversation")
    wait_for(lambda: page.evaluate("document.activeElement === document.querySelector('#message textarea')"), 3,
             "focus back in the message box")
    shot(page, "keyboard")
    page.context.close()


def reply_and_copy(page):
    """A short reply in a new chat, then a click on its Copy button; the reply's bubble."""
    set_max_tokens(page, 8)
    page.click("#new-chat")
    wait_for(lambda: page.locator('#chatbot [data-testid="user"]').count() == 0, 5, "an empty chat")
    page.fill("#message textarea", "Say hello.")
    page.click("#send")
    wait_for(lambda: "tok/s" in stats_line(page), 60, "the reply")
    bot = page.locator('#chatbot [data-testid="bot"]').last
    bot.hover()
    page.locator('#chatbot button[aria-label="Copy message"], #chatbot button[title="Copy message"]').last.click()
    return bot


def assert_copied_without_stats(copied: str, bot) -> None:
    assert copied.strip() and "<sub>" not in copied and "tok/s" not in copied, copied
    assert copied.strip() in bot.inner_text()


def test_copy_copies_the_reply_without_its_stats(browser, app):
    page = open_page(browser, app)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    bot = reply_and_copy(page)
    copied = page.evaluate("navigator.clipboard.readText()")
    assert_copied_without_stats(copied, bot)
    page.context.close()


# A page over plain http from another machine (LAN sharing) is no secure context: no
# navigator.clipboard, and Gradio copies through a hidden textarea and execCommand("copy").
NO_CLIPBOARD_API = """
delete Navigator.prototype.clipboard;
window.__copied = [];
window.addEventListener('copy', (e) => {
  const t = e.target, set = e.clipboardData && e.clipboardData.getData('text/plain');
  window.__copied.push(set || (t && t.value !== undefined ? t.value.substring(t.selectionStart, t.selectionEnd)
                                                           : String(getSelection())));
});
"""


def test_copy_without_a_clipboard_api_leaves_out_the_stats_too(browser, app):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(NO_CLIPBOARD_API)
    page = context.new_page()
    page.goto(app.url)
    page.wait_for_selector("#message textarea")
    assert page.evaluate("'clipboard' in navigator") is False
    bot = reply_and_copy(page)
    copied = wait_for(lambda: page.evaluate("window.__copied"), 5, "a copy")[-1]
    assert_copied_without_stats(copied, bot)
    context.close()


def test_presets_table_scrolls_in_its_own_box_on_a_phone(browser, app):
    page = open_page(browser, app, width=390, height=844)
    tab = page.get_by_role("tab", name="Presets")
    if not tab.is_visible():  # a narrow screen folds the tabs into an overflow menu
        page.screenshot(path=str(ARTIFACTS / "a11y-phone-tabs.png"))
        page.locator(".overflow-menu button, button.overflow-menu, [class*='overflow'] button").first.click()
    page.get_by_role("tab", name="Presets").click()
    page.wait_for_selector("#presets-table table", timeout=30_000)
    page_width = page.evaluate("document.documentElement.scrollWidth")
    table_box = page.evaluate("(() => { const t = document.querySelector('#presets-table');"
                              " return [t.scrollWidth, t.clientWidth]; })()")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "a11y-phone-presets.png"), full_page=True)
    assert page_width <= 390 + 1, f"the page is {page_width} px wide on a 390 px phone"
    assert table_box[0] >= table_box[1]
    page.context.close()
