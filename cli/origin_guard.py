"""Refuse what a browser sends on behalf of another site, before Gradio or the /v1 routes see it.

Gradio 6's CORS middleware only leaves out ``Access-Control-Allow-Origin``: a POST to
``/gradio_api/queue/join`` or ``/gradio_api/upload`` from ``https://evil.example`` (or from a
sandboxed page, ``Origin: null``) still runs; the browser merely hides the answer. So:

* a request that carries an ``Origin`` must come from this server's own origin (scheme-less
  compare of host and port with the ``Host`` header); clients that are not browsers send no
  ``Origin`` and pass;
* bound to loopback, the ``Host`` must be a loopback name (``127.0.0.1``, ``localhost``, ``::1``):
  a DNS-rebinding page (``evil.example`` resolved to 127.0.0.1) is same-origin to the browser;
* serving the network, the ``Host`` must be a loopback name, one of this machine's addresses or
  names, or a name given with ``--allowed-host`` (the same rebinding attack works off loopback).
"""
from __future__ import annotations

import ipaddress
from typing import Optional
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse

_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_and_port(netloc: str, default_port: Optional[int]) -> Optional[tuple[str, Optional[int]]]:
    try:
        parts = urlsplit("//" + netloc)
        return (parts.hostname or "").lower(), parts.port or default_port
    except ValueError:  # a bad port or bracket
        return None


def same_origin(origin: str, host_header: str) -> bool:
    """Whether a browser's ``Origin`` names the server the request was sent to (``Host``)."""
    scheme = origin.partition("://")[0].lower()
    if scheme not in _DEFAULT_PORTS:  # "null", file://, chrome-extension://, ...
        return False
    default = _DEFAULT_PORTS[scheme]
    ours = _host_and_port(host_header, default)
    theirs = _host_and_port(origin.partition("://")[2].split("/", 1)[0], default)
    return ours is not None and theirs is not None and bool(ours[0]) and ours == theirs


class OriginGuard:
    """ASGI middleware: 403 for a foreign ``Origin``; with ``loopback_only``, also for a ``Host``
    that is not a loopback name."""

    def __init__(self, app, loopback_only: bool, allowed_hosts: Optional[frozenset] = None) -> None:
        self.app = app
        self.loopback_only = loopback_only
        # Serving the network: the Host names this app answers to (None: any, e.g. behind --share).
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)

    def problem(self, headers: Headers, path: str = "") -> Optional[str]:
        if _is_file_route_url(path):
            return "The file route serves files of this app only, never web addresses."
        host = headers.get("host", "")
        if self.loopback_only:
            parsed = _host_and_port(host, None)
            if parsed is None or not is_loopback_name(parsed[0]):
                return "This app serves only this machine: open it at http://127.0.0.1 (Host not allowed)."
        elif self.allowed_hosts is not None:
            parsed = _host_and_port(host, None)
            name = parsed[0].strip("[]") if parsed else ""
            if not (name and (is_loopback_name(name) or name in self.allowed_hosts)):
                return ("Host not allowed: open FitChat at this machine's address, or start it with "
                        "--allowed-host NAME to serve it under another name.")
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, host):
            return "Cross-site request refused (Origin does not match this server)."
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            problem = self.problem(Headers(scope=scope), scope.get("path", ""))
            if problem is not None:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await PlainTextResponse(problem, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_file_route_url(path: str) -> bool:
    """``/gradio_api/file=<URL>`` makes Gradio fetch the URL (it refuses only private addresses):
    refuse every web address there."""
    from urllib.parse import unquote

    _, sep, rest = path.partition("/file=")
    if not sep:
        return False
    rest = unquote(unquote(rest)).strip().lower()
    return "://" in rest or rest.startswith(("//", "\\\\", "http:", "https:"))


def served_host_names(extra: tuple[str, ...] = ()) -> frozenset:
    """The Host names an app serving the network answers to: this machine's addresses and names,
    plus ``extra`` (``--allowed-host``)."""
    import socket

    from services.network import lan_addresses

    names = {*lan_addresses(), *extra}
    hostname = socket.gethostname()
    if hostname:
        names |= {hostname, f"{hostname}.local", socket.getfqdn()}
    return frozenset(n.lower() for n in names if n)
