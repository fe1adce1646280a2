"""Per-browser chats when the app serves the network without logins (``--insecure-no-auth``).

Without logins every request used to be the same user, so everyone on the network shared one chat.
This ASGI middleware gives each browser a random, HttpOnly cookie and tells the handlers who it is
through the ``x-fitchat-browser`` header (a hash of the cookie; ``ui.access.username`` reads it).
The header is always removed from what clients send, so it cannot be forged in any mode.
"""
from __future__ import annotations

import hashlib
import secrets
from http.cookies import SimpleCookie

COOKIE = "fitchat-browser"
HEADER = b"x-fitchat-browser"


def browser_key(token: str) -> str:
    return "browser-" + hashlib.sha256(token.encode()).hexdigest()[:24]


class BrowserId:
    def __init__(self, app, active: bool) -> None:
        self.app = app
        self.active = active

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != HEADER]
        new_token = None
        if self.active:
            token = _cookie(headers)
            if not token:
                token = new_token = secrets.token_urlsafe(24)
            headers.append((HEADER, browser_key(token).encode()))
        scope = dict(scope, headers=headers)
        if new_token is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={new_token}; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000"
                message = dict(message, headers=[*message.get("headers", []), (b"set-cookie", cookie.encode())])
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _cookie(headers) -> str:
    for key, value in headers:
        if key.lower() == b"cookie":
            jar = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # noqa: BLE001 - a malformed cookie header is simply no cookie
                continue
            if COOKIE in jar and 16 <= len(jar[COOKIE].value) <= 64:
                return jar[COOKIE].value
    return ""
