"""Slow down login guessing at Gradio's ``POST /login`` (see ``core.login_throttle``).

An ASGI middleware: it reads the small login form (user name only; the password is passed on,
never kept or logged), answers 429 with ``Retry-After`` while the address (or the user name, for
an address that has failed) must wait, and records the outcome Gradio gives (200 or 400). Each
failure is one log line with the user name and address, never the password.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Callable, Optional
from urllib.parse import parse_qs

from core.login_throttle import LoginThrottle

_LOGIN_PATHS = ("/login", "/login/")
_MAX_FORM_BYTES = 64 * 1024


def client_address(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


class SharedThrottle:
    """A ``LoginThrottle`` behind a lock, with the clock and the log line (thread-safe)."""

    def __init__(self, throttle: Optional[LoginThrottle] = None, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
        self.throttle = throttle or LoginThrottle()
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()

    def wait_s(self, address: str, user: str) -> float:
        with self._lock:
            return self.throttle.wait_s(address, user, self._clock())

    def failed(self, address: str, user: str, what: str) -> None:
        with self._lock:
            failure = self.throttle.failed(address, user, self._clock())
        who = f" for user {user[:64]!r}" if user else ""
        self._log(f"fitchat: {what} failed{who} from {address} ({failure.count} in a row; "
                  f"next try allowed in {failure.wait_s:.0f} s)")

    def succeeded(self, address: str, user: str) -> None:
        with self._lock:
            self.throttle.succeeded(address, user)


def too_many(wait: float, what: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    seconds = max(1, int(wait + 0.999))
    body = json.dumps({"detail": f"Too many failed {what}s from this address: try again in {seconds} s."}).encode()
    headers = [(b"content-type", b"application/json"), (b"retry-after", str(seconds).encode()),
               (b"content-length", str(len(body)).encode())]
    return 429, headers, body


class LoginGuard:
    def __init__(self, app, throttle: SharedThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def _answer(self, send, status: int, headers, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in _LOGIN_PATHS:
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > _MAX_FORM_BYTES:
                await self._answer(send, 413, [(b"content-type", b"application/json")],
                                   b'{"detail": "The login form is too large."}')
                return
        try:
            fields = parse_qs(body.decode("utf-8"), max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            fields = {}
        user = (fields.get("username") or [""])[0].strip()
        address = client_address(scope)
        wait = self.throttle.wait_s(address, user)
        if wait > 0:
            await self._answer(send, *too_many(wait, "login"))
            return

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, replay, watch)
        if status.get("code") == 200:
            self.throttle.succeeded(address, user)
        elif status.get("code") == 400:
            self.throttle.failed(address, user, "login")
