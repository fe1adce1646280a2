"""AppContext: the one object every tab receives. No module globals anywhere in the UI."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from backends.manager import ModelManager
from core.model_catalog import ModelCatalog
from core.plan import Plan
from core.settings import AppSettings
from core.sharing import ShareConfirmation
from ui.load_feedback import LoadRuns


class CancelRegistry:
    """One Stop switch per browser session (keyed by Gradio's session hash).

    ``reserve`` marks a session busy from the moment its message is taken until its reply starts
    (``start``), so a second send in between is refused instead of racing the first."""

    RESERVATION_S = 30.0  # a reservation whose reply never started (page closed) expires

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._reserved: dict[str, float] = {}
        self._lock = threading.Lock()

    def _busy(self, session: str) -> bool:
        if session not in self._events:
            return False
        taken = self._reserved.get(session)
        return taken is None or time.monotonic() - taken < self.RESERVATION_S

    def busy(self, session: str) -> bool:
        with self._lock:
            return self._busy(session)

    def reserve(self, session: str) -> bool:
        """False when a reply of ``session`` is running or about to start."""
        with self._lock:
            if self._busy(session):
                return False
            self._events[session] = threading.Event()
            self._reserved[session] = time.monotonic()
            return True

    def start(self, session: str) -> threading.Event:
        with self._lock:
            previous = self._events.get(session)
            if self._reserved.pop(session, None) is not None and previous is not None:
                return previous  # the reservation made when the message was taken (Stop may have set it)
            if previous is not None:
                previous.set()  # a new request from the same session ends the old one
            event = threading.Event()
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
                self._reserved.pop(session, None)


@dataclass
class AppContext:
    settings: AppSettings
    manager: ModelManager
    catalog: Callable[[], ModelCatalog]  # rescans the disk on each call
    cancels: CancelRegistry = field(default_factory=CancelRegistry)
    # This machine, probed (cached for a few seconds: free VRAM changes). None in tests that need none.
    hardware: Optional[Callable[[], Any]] = None
    # Every user's conversations (services.conversation_store.ConversationStore); None: not kept.
    conversations: Optional[Any] = None
    # Resources tab: makes the app's one sampler (None: psutil + NVML over ``manager``; tests pass fakes),
    # and gives the planner's prediction for the loaded model (None until the planner provides one).
    sampler_factory: Optional[Callable[["AppContext"], Any]] = None
    loaded_plan: Callable[[], Optional[Plan]] = field(default=lambda: None)
    # The admin's remote engines (services.remote_endpoints.RemoteEndpointStore); None: none can be added.
    remotes: Optional[Any] = None
    remote_health: Optional[Any] = None  # backends.remote_engine.RemoteHealth: the Resources tab's remote card
    # The one planning object (services.planning.Planning): this machine, its calibration and model
    # facts, shared with the model manager's planner. Made from ``hardware`` when not given.
    planning: Optional[Any] = None
    # Turning sharing on without logins needs a code printed in the app's terminal (issue 13).
    share_confirmation: ShareConfirmation = field(default_factory=ShareConfirmation)
    # Each browser session's latest load, for the "Loading <model>… N s" line by its Load button.
    loads: LoadRuns = field(default_factory=LoadRuns)

    def __post_init__(self) -> None:
        if self.planning is None and self.hardware is not None:
            from services.planning import Planning

            self.planning = Planning(self.settings.data_dir, self.hardware, ttl_s=0)
