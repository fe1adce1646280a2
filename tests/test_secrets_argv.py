"""Secrets never stay on the command line (issue 13, hole 9): ``--auth``/``--api-key`` are moved to
the environment with a warning and the app re-executes itself without them; files and environment
variables work on their own; a restart's command line never carries one."""
from __future__ import annotations

import httpx
import pytest

from cli.serve import move_secrets_to_environment, settings_from_args
from core.sharing import restart_argv, split_secret_flags
from tests.conftest import start_app

PASSWORD = "correct-horse-77"
KEY = "key-0123456789abcdef-secret"


def test_split_secret_flags():
    rest, found = split_secret_flags(["--ctx", "2048", "--auth", "a:password1", f"--api-key={KEY}",
                                      "--auth", "b:password2", "--admin", "a"])
    assert rest == ["--ctx", "2048", "--admin", "a"]
    assert found == {"--auth": ["a:password1", "b:password2"], "--api-key": [KEY]}


def test_secrets_move_to_the_environment_with_a_warning():
    env = {"FITCHAT_AUTH": "c:password3"}
    rest, warnings = move_secrets_to_environment(["--listen", "--auth", "a:password1", "--api-key", KEY], env)
    assert rest == ["--listen"]
    assert env == {"FITCHAT_AUTH": "c:password3\na:password1", "FITCHAT_API_KEY": KEY}
    assert len(warnings) == 2 and all("ps" in w and "password1" not in w and KEY not in w for w in warnings)
    settings = settings_from_args(rest + ["--admin", "a"], environ=env)
    assert settings.auth == (("c", "password3"), ("a", "password1")) and settings.api_keys == (KEY,)


def test_a_restart_command_line_never_carries_a_secret(tmp_path):
    settings = settings_from_args(["--auth", "a:password1", "--api-key", KEY, "--ctx", "2048",
                                   "--data-dir", str(tmp_path)], environ={})
    for share in (True, False):
        argv = restart_argv(list(settings.argv), share=share, keep_logins=True)
        assert not any("password1" in a or KEY in a for a in argv), argv


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("how", ["argv", "environment"])
def test_the_running_app_shows_no_secret_in_ps(tmp_path, how):
    args = ["--listen", "--no-default-model"]
    env = None
    if how == "argv":
        args += ["--auth", f"alice:{PASSWORD}", "--api-key", KEY]
    else:
        env = {"FITCHAT_AUTH": f"alice:{PASSWORD}:admin", "FITCHAT_API_KEY": KEY}
    app = start_app(args, tmp_path, env=env)
    try:
        assert PASSWORD not in _cmdline(app.proc.pid) and KEY not in _cmdline(app.proc.pid)
        assert httpx.post(app.url + "login", data={"username": "alice", "password": PASSWORD}).status_code == 200
        assert httpx.get(app.url + "v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    finally:
        output = app.stop()
    assert ("readable by every user" in output) == (how == "argv")
    assert PASSWORD not in output and KEY not in output
