"""Network facts for printing where the app can be reached."""
from __future__ import annotations

import socket


def lan_addresses() -> list[str]:
    """IPv4 addresses of this machine's non-loopback interfaces."""
    try:
        import psutil

        addrs = psutil.net_if_addrs()
    except Exception:
        return []
    found = []
    for entries in addrs.values():
        for entry in entries:
            if entry.family == socket.AF_INET and not entry.address.startswith("127."):
                found.append(entry.address)
    return sorted(set(found))


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
