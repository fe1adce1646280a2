"""Where others on the network can open the app, with a QR code for phones (LAN mode only)."""
from __future__ import annotations

import html

import gradio as gr

from services.network import lan_addresses
from ui.context import AppContext


def share_html(ctx: AppContext) -> str:
    settings = ctx.settings
    if not settings.listens_beyond_loopback:
        return ""
    import segno

    urls = [f"http://{ip}:{settings.port}" for ip in lan_addresses()]
    if not urls:
        return "<p>Serving on the network, but this machine reports no LAN address.</p>"
    login = "login required" if settings.auth else "<b>no login: anyone on the network can use it</b>"
    items = "".join(
        f'<div style="display:inline-block;margin:6px;text-align:center"><img alt="QR code for {html.escape(u)}" '
        f'src="{segno.make(u).svg_data_uri(scale=4)}"><br><code>{html.escape(u)}</code></div>' for u in urls)
    return f"<p>Open FitChat from another device ({login}):</p>{items}"


def build(ctx: AppContext) -> None:
    if ctx.settings.listens_beyond_loopback:
        with gr.Accordion("Share on your network", open=False, elem_id="share-accordion"):
            gr.HTML(share_html(ctx), elem_id="share-panel")
