"""An upload button that takes only files uploaded from the browser, never a web address.

Gradio's own file components accept a FileData whose path is a URL and then download it on the
server (public addresses pass its SSRF check), so a crafted request could make FitChat fetch from
the network. FitChat never needs that: this button refuses URLs before anything is fetched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import gradio as gr
from gradio_client.utils import is_http_url_like

REFUSED = "Only files uploaded from this browser can be imported, not web addresses."


def _refuse_urls(url_or_file_path: str | Path | None) -> None:
    if url_or_file_path is not None and is_http_url_like(str(url_or_file_path)):
        raise gr.Error(REFUSED)


class LocalUploadButton(gr.UploadButton):
    is_template = True  # drawn by the browser as a plain UploadButton

    async def async_move_resource_to_block_cache(self, url_or_file_path: str | Path | None) -> Optional[str]:
        _refuse_urls(url_or_file_path)
        return await super().async_move_resource_to_block_cache(url_or_file_path)

    def move_resource_to_block_cache(self, url_or_file_path: str | Path | None) -> Optional[str]:
        _refuse_urls(url_or_file_path)
        return super().move_resource_to_block_cache(url_or_file_path)
