"""Turning network sharing on or off from the UI: the command line FitChat restarts itself with.

Sharing changes what the server binds and who must log in, which Gradio fixes at launch; so the app
restarts in place with the same command line, minus its network and login flags, plus ``--listen``
and the logins (on) or nothing (off). Pure: argv lists in, argv lists out.
"""
from __future__ import annotations

from typing import Optional

# Flags this rewrite owns, with whether each takes a value.
NETWORK_FLAGS = {"--host": True, "--listen": False, "--auth": True, "--auth-file": True, "--admin": True,
                 "--insecure-no-auth": False, "--share": False, "--login-file-once": True}
MODEL_FLAGS = {"--model": True, "--no-default-model": False}
LOGIN_FLAGS = {"--auth": True, "--auth-file": True, "--admin": True}  # logins given on the command line


def _partition(argv: list[str], flags: dict[str, bool]) -> tuple[list[str], list[str]]:
    """``argv`` split into (the other arguments, the occurrences of ``flags`` with their values),
    each in order. ``--flag value`` and ``--flag=value`` both count."""
    others, matched, take = [], [], False
    for arg in argv:
        if take:
            matched.append(arg)
            take = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            matched.append(arg)
            take = flags[name] and "=" not in arg
        else:
            others.append(arg)
    return others, matched


def restart_argv(argv: list[str], share: bool, login_file: Optional[str] = None,
                 keep_logins: bool = False, model_path: Optional[str] = None) -> list[str]:
    """The command line to restart with.

    ``share``: serve on the network (``--listen``) or on this machine only. ``login_file``: a one-time
    file of logins for the new process to read and delete. ``keep_logins``: keep the ``--auth``,
    ``--auth-file`` and ``--admin`` flags the app already has (sharing an app that has logins).
    ``model_path``: the GGUF loaded now, to load again after the restart.
    """
    if share and not (login_file or keep_logins):
        raise ValueError("sharing on the network needs logins")
    kept_login_args = _partition(argv, LOGIN_FLAGS)[1] if keep_logins else []
    out = _partition(argv, NETWORK_FLAGS)[0]
    if model_path is not None:
        out = _partition(out, MODEL_FLAGS)[0] + ["--model", model_path]
    if share:
        out += ["--listen", *kept_login_args]
        if login_file:
            out += ["--login-file-once", login_file]
    elif keep_logins:
        out += kept_login_args
    return out



# Secrets that must not stay on a command line (``ps`` shows it to every local user), and the
# environment variables that carry them instead (readable by the same user only).
SECRET_FLAGS = {"--auth": "FITCHAT_AUTH", "--api-key": "FITCHAT_API_KEY"}


def split_secret_flags(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``argv`` without ``--auth``/``--api-key`` and their values, and those values by flag."""
    others, matched = _partition(argv, {flag: True for flag in SECRET_FLAGS})
    found: dict[str, list[str]] = {}
    i = 0
    while i < len(matched):
        name, eq, value = matched[i].partition("=")
        if not eq:
            i += 1
            value = matched[i] if i < len(matched) else ""
        found.setdefault(name, []).append(value)
        i += 1
    return others, found


class ShareConfirmation:
    """A one-time code that a person at this machine reads from the app's terminal, so that no
    other local process can turn a loopback-only app without logins (every caller is admin there)
    into a network service with a login it chooses. Codes expire after ``ttl_s`` and after
    ``max_tries`` wrong entries. The caller passes the clock and prints the code."""

    ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I

    def __init__(self, ttl_s: float = 300.0, max_tries: int = 3) -> None:
        self.ttl_s = ttl_s
        self.max_tries = max_tries
        self._code: Optional[str] = None
        self._issued = 0.0
        self._tries = 0

    def _valid(self, now: float) -> bool:
        return self._code is not None and now - self._issued < self.ttl_s and self._tries < self.max_tries

    def issue(self, now: float) -> Optional[str]:
        """A new code to print, or None while the last one is still valid (it was printed already)."""
        import secrets

        if self._valid(now):
            return None
        raw = "".join(secrets.choice(self.ALPHABET) for _ in range(8))
        self._code, self._issued, self._tries = f"{raw[:4]}-{raw[4:]}", now, 0
        return self._code

    def confirm(self, code: object, now: float) -> bool:
        """Whether ``code`` is the valid code (then used up)."""
        import hmac

        if not isinstance(code, str) or not code.strip() or not self._valid(now):
            return False
        given = code.strip().upper().replace(" ", "")
        if hmac.compare_digest(given.encode(), self._code.encode()):
            self._code = None
            return True
        self._tries += 1
        return False
