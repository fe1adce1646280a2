"""AppContext: the one object every tab receives. No module globals anywhere in the UI."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from backends.manager import ModelManager
from core.model_catalog import ModelCatalog
from core.plan import Plan
from core.settings import AppSettings


class CancelRegistry:
    """One Stop switch per browser session (keyed by Gradio's session hash)."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            previous = self._events.get(session)
            if previous is not None:
                previous.set()  # a new request from the same session ends the old one
            self._events[session] = event
        return event

    def cancel(self, session: str) -> bool:
        with self._lock:
            event = self._events.get(session)
        if event is None:
            return False
        event.set()
        return True

    def finish(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]


@dataclass
class AppContext:
    settings: AppSettings
    manager: ModelManager
    catalog: Callable[[], ModelCatalog]  # rescans the disk on each call
    cancels: CancelRegistry = field(default_factory=CancelRegistry)
    # This machine, probed (cached for a few seconds: free VRAM changes). None in tests that need none.
    hardware: Optional[Callable[[], Any]] = None
    # Each user's current chat, kept across restarts (services.chat_store.ChatStore); None: not kept.
    chat_store: Optional[Any] = None
    # Resources tab: makes the app's one sampler (None: psutil + NVML over ``manager``; tests pass fakes),
    # and gives the planner's prediction for the loaded model (None until the planner provides one).
    sampler_factory: Optional[Callable[["AppContext"], Any]] = None
    loaded_plan: Callable[[], Optional[Plan]] = field(default=lambda: None)
    # The admin's remote engines (services.remote_endpoints.RemoteEndpointStore); None: none can be added.
    remotes: Optional[Any] = None
