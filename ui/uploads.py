"""File inputs that take only files uploaded from the browser, never a web address.

Gradio's file components accept a FileData whose path is a URL and then download it on the server
(public addresses pass its SSRF check), so a crafted request could make FitChat fetch from the
network. FitChat never needs that: ``local_files_only`` makes a component refuse URLs before
anything is fetched. It wraps the instance's two cache methods rather than subclassing, because a
component subclass makes Gradio write a type stub at every import (0.2 s of start-up).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, TypeVar

import gradio as gr
from gradio_client.utils import is_http_url_like

REFUSED = "Only files uploaded from this browser can be imported, not web addresses."
MARK = "_fitchat_local_files_only"
C = TypeVar("C", bound=gr.components.Component)


def _refuse_urls(url_or_file_path: str | Path | None) -> None:
    if url_or_file_path is not None and is_http_url_like(str(url_or_file_path)):
        raise gr.Error(REFUSED)


def local_files_only(component: C) -> C:
    """``component``, refusing FileData that points at a web address (returns it, for chaining)."""
    move_async, move = component.async_move_resource_to_block_cache, component.move_resource_to_block_cache

    async def async_move_resource_to_block_cache(url_or_file_path: str | Path | None) -> Optional[str]:
        _refuse_urls(url_or_file_path)
        return await move_async(url_or_file_path)

    def move_resource_to_block_cache(url_or_file_path: str | Path | None) -> Optional[str]:
        _refuse_urls(url_or_file_path)
        return move(url_or_file_path)

    component.async_move_resource_to_block_cache = async_move_resource_to_block_cache
    component.move_resource_to_block_cache = move_resource_to_block_cache
    setattr(component, MARK, True)
    return component
