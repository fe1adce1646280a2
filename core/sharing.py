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


def _without(argv: list[str], flags: dict[str, bool]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = flags[name] and "=" not in arg
            continue
        out.append(arg)
    return out


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
    kept_login_args = _only(argv, LOGIN_FLAGS) if keep_logins else []
    out = _without(argv, NETWORK_FLAGS)
    if model_path is not None:
        out = _without(out, MODEL_FLAGS) + ["--model", model_path]
    if share:
        out += ["--listen", *kept_login_args]
        if login_file:
            out += ["--login-file-once", login_file]
    elif keep_logins:
        out += kept_login_args
    return out


def _only(argv: list[str], flags: dict[str, bool]) -> list[str]:
    """The occurrences of ``flags`` in ``argv`` (with their values), in order."""
    out, take = [], False
    for arg in argv:
        if take:
            out.append(arg)
            take = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            out.append(arg)
            take = flags[name] and "=" not in arg
    return out
