"""Load feedback where the user looks (bug 8): next to the Load button that started a load, at once,
"Unloading <old> → loading <new>… 3 s" with the elapsed time, then what came of it.

``LoadRuns`` (one per app, on the context) remembers each browser session's load; its methods are
plain functions of (session, manager state, clock) that tests call directly. ``wire_load`` puts a
Load button's event chain together: say it (start) → load (the tab's handler, unchanged for API
clients) → say what came of it; a timer ticks the elapsed seconds meanwhile.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import gradio as gr

from backends.manager import ManagerState


@dataclass
class LoadRun:
    name: str
    old: Optional[str]   # the model being unloaded for it, if one was loaded
    since: float
    error: Optional[str] = None   # the load was refused before it started (the toast says the same)
    took: Optional[float] = None  # set when the load step returned


def loaded_name(state: ManagerState) -> Optional[str]:
    if state.status != "ready" or state.info is None:
        return None
    return (state.spec.display_name if state.spec is not None and state.spec.display_name else None) or state.info.name


def loading_text(name: str, old: Optional[str], elapsed: float) -> str:
    going = f"Unloading **{old}** → loading **{name}**" if old else f"Loading **{name}**"
    return f"{going}… {elapsed:.0f} s"


def done_text(run: LoadRun, state: ManagerState) -> str:
    if run.error:
        return f"✗ **{run.name}** not loaded: {run.error[:400]}"
    if loaded_name(state) == run.name:
        return f"✓ **{run.name}** loaded in {run.took or 0:.1f} s"
    if state.status in ("failed", "crashed") and state.error:
        return f"✗ **{run.name}** did not load: {state.error[:400]}"
    still = loaded_name(state)
    return f"✗ **{run.name}** was not loaded (the message says why)" + (f"; **{still}** is still loaded." if still else ".")


class LoadRuns:
    """Each browser session's latest load (keyed by Gradio's session hash)."""

    MAX_SESSIONS = 256  # oldest forgotten first; a line that is forgotten simply stops updating

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._runs: dict[str, LoadRun] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def start(self, session: str, name: str, state: ManagerState) -> str:
        run = LoadRun(name=name[:200], old=loaded_name(state), since=self._clock())
        with self._lock:
            self._runs.pop(session, None)
            self._runs[session] = run
            while len(self._runs) > self.MAX_SESSIONS:
                self._runs.pop(next(iter(self._runs)))
        return loading_text(run.name, run.old, 0)

    def refused(self, session: str, message: str) -> None:
        with self._lock:
            run = self._runs.get(session)
            if run is not None and run.took is None:
                run.error = message

    def finish(self, session: str) -> None:
        with self._lock:
            run = self._runs.get(session)
            if run is not None and run.took is None:
                run.took = self._clock() - run.since

    def line(self, session: str, state: ManagerState) -> tuple[Optional[str], bool]:
        """What the line next to the button says now (None: nothing started here), and whether the
        load is still running (the timer keeps ticking)."""
        with self._lock:
            run = self._runs.get(session)
            if run is None:
                return None, False
            if run.took is None:
                return loading_text(run.name, run.old, self._clock() - run.since), True
        return done_text(run, state), False


def wire_load(ctx, button: gr.Button, name_input: gr.components.Component, name_of: Callable[[Any], Optional[str]],
              load_fn: Callable, load_inputs: Sequence, load_outputs: Sequence, line: gr.Markdown,
              also: Sequence[gr.Markdown] = (), **load_event: Any):
    """``button`` starts: ``line`` (and ``also``, e.g. the chat's status line) says at once what
    loads and what goes away, ticking the seconds; then ``load_fn`` (the API endpoint, as before);
    then ``line`` says what came of it. Returns the load step's event."""
    from ui.access import username

    runs = ctx.loads
    timer = gr.Timer(1.0, active=False)

    def on_start(request: gr.Request, value):
        name = name_of(value) if ctx.settings.is_admin(username(request)) else None
        if not name:  # nothing to say: the load step refuses it with a toast
            return (gr.skip(), *[gr.skip()] * len(also), gr.Timer(active=False))
        text = runs.start(request.session_hash, name, ctx.manager.state())
        return (text, *[text] * len(also), gr.Timer(active=True))

    def on_load(request: gr.Request, *values):
        try:
            return load_fn(request, *values)
        except gr.Error as exc:
            runs.refused(request.session_hash, str(exc.message))
            raise
        finally:
            runs.finish(request.session_hash)

    on_load.__name__ = getattr(load_fn, "__name__", "load")

    def on_line(request: gr.Request):
        text, running = runs.line(request.session_hash, ctx.manager.state())
        return (gr.skip() if text is None else text), gr.Timer(active=running)

    event = button.click(on_start, name_input, [line, *also, timer], api_visibility="private", concurrency_id="stop",
                         concurrency_limit=None).then(on_load, list(load_inputs), list(load_outputs),
                                                      show_progress="hidden", **load_event)
    event.then(on_line, None, [line, timer], api_visibility="private", queue=False)
    timer.tick(on_line, None, [line, timer], api_visibility="private", queue=False)
    return event
