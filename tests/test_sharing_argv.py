"""The command line FitChat restarts with when sharing is turned on or off in the UI."""
from __future__ import annotations

import pytest

from core.sharing import restart_argv


@pytest.mark.parametrize("argv,kwargs,expected", [
    ([], dict(share=True, login_file="/d/l.txt"), ["--listen", "--login-file-once", "/d/l.txt"]),
    (["--ctx", "4096", "--host", "127.0.0.1", "--port", "7000"], dict(share=True, login_file="/d/l.txt"),
     ["--ctx", "4096", "--port", "7000", "--listen", "--login-file-once", "/d/l.txt"]),
    (["--host=127.0.0.1", "--kv", "q8_0"], dict(share=True, login_file="f"), ["--kv", "q8_0", "--listen", "--login-file-once", "f"]),
    # an app that already has logins keeps them, on the network and back
    (["--auth", "a:password1", "--admin", "a", "--ctx", "2048"], dict(share=True, keep_logins=True),
     ["--ctx", "2048", "--listen", "--auth", "a:password1", "--admin", "a"]),
    (["--listen", "--auth-file", "u.txt", "--port", "8000"], dict(share=False, keep_logins=True),
     ["--port", "8000", "--auth-file", "u.txt"]),
    # logins made in the UI were read once and deleted: stopping drops them
    (["--ctx", "2048", "--listen", "--login-file-once", "/d/l.txt"], dict(share=False),
     ["--ctx", "2048"]),
    (["--listen", "--insecure-no-auth", "--share", "--auth", "x:password1"], dict(share=False), []),
    # the model loaded now comes back after the restart
    (["--model", "/m/a.gguf", "--ctx", "2048"], dict(share=True, login_file="f", model_path="/m/b.gguf"),
     ["--ctx", "2048", "--model", "/m/b.gguf", "--listen", "--login-file-once", "f"]),
    (["--no-default-model"], dict(share=False, model_path="/m/b.gguf"), ["--model", "/m/b.gguf"]),
])
def test_restart_argv(argv, kwargs, expected):
    assert restart_argv(argv, **kwargs) == expected


def test_sharing_without_logins_is_refused():
    with pytest.raises(ValueError, match="needs logins"):
        restart_argv(["--ctx", "2048"], share=True)


# -- the panel's handlers (the restart itself is recorded, not run) --------------------------------
class _Request:
    def __init__(self, username=None):
        self.username = username


@pytest.fixture
def ctx(tmp_path):
    from backends.manager import ModelManager
    from core.model_catalog import ModelCatalog
    from core.settings import AppSettings
    from ui.context import AppContext

    return AppContext(AppSettings(data_dir=tmp_path, argv=("--ctx", "2048")), ModelManager(), lambda: ModelCatalog(()))


def test_start_sharing_writes_a_private_one_time_login_and_restarts_with_it(ctx, tmp_path):
    import stat

    from ui.share_panel import start_sharing

    restarts = []
    message = _start_confirmed(ctx, " alice ", "correct-horse-9", lambda argv, before: restarts.append(argv))
    assert "Restarting on your network" in message
    (argv,) = restarts
    assert argv[:3] == ["--ctx", "2048", "--listen"] and argv[3] == "--login-file-once"
    login = tmp_path / argv[4].rsplit("/", 1)[1]
    assert login.read_text() == "alice:correct-horse-9:admin\n"
    assert stat.S_IMODE(login.stat().st_mode) == 0o600


def _start_confirmed(ctx, user, password, restart):
    """Press Share, read the code the terminal shows, press Share again with it."""
    import contextlib
    import io
    import re

    import gradio as gr

    from ui.share_panel import start_sharing

    terminal = io.StringIO()
    with contextlib.redirect_stdout(terminal), pytest.raises(gr.Error, match="code printed in the terminal"):
        start_sharing(ctx, _Request(), user, password, lambda *a: pytest.fail("restarted without a code"))
    code = re.search(r"code on the app page: ([A-Z0-9]{4}-[A-Z0-9]{4})", terminal.getvalue()).group(1)
    return start_sharing(ctx, _Request(), user, password, restart, code.lower())


def test_sharing_without_logins_needs_the_code_from_the_terminal(ctx, tmp_path, capsys):
    import re

    import gradio as gr

    from ui.share_panel import start_sharing

    def never(*a):
        pytest.fail("restarted")

    # A bare API call, as any local process could make: refused, and a code goes to the terminal.
    with pytest.raises(gr.Error, match="code printed in the terminal"):
        start_sharing(ctx, _Request(), "mallory", "chosen-by-mallory", never)
    code = re.search(r"app page: (\S+)", capsys.readouterr().out).group(1)
    with pytest.raises(gr.Error, match="code printed"):  # a guess is no code; the printed one stays
        start_sharing(ctx, _Request(), "mallory", "chosen-by-mallory", never, "AAAA-AAAA")
    assert "app page" not in capsys.readouterr().out
    for guess in ("BBBB-BBBB", "CCCC-CCCC"):  # three wrong entries use the code up
        with pytest.raises(gr.Error):
            start_sharing(ctx, _Request(), "mallory", "chosen-by-mallory", never, guess)
    with pytest.raises(gr.Error):
        start_sharing(ctx, _Request(), "mallory", "chosen-by-mallory", never, code)
    assert not list(tmp_path.glob(".login-once-*"))


def test_share_confirmation_expires():
    from core.sharing import ShareConfirmation

    confirmation = ShareConfirmation(ttl_s=300)
    code = confirmation.issue(0.0)
    assert confirmation.issue(10.0) is None  # still valid: not printed again
    assert not confirmation.confirm(code, 301.0)
    fresh = confirmation.issue(301.0)
    assert fresh and fresh != code and confirmation.confirm(fresh, 302.0) and not confirmation.confirm(fresh, 303.0)


@pytest.mark.parametrize("user,password,message", [
    ("alice", "short", "shorter than 8"), ("bad name!", "correct-horse-9", "user names may use"),
    (None, "correct-horse-9", "Choose a user name"), ("alice", ["x"], "Choose a user name")])
def test_start_sharing_validates_the_login_server_side(ctx, tmp_path, user, password, message):
    import gradio as gr

    from ui.share_panel import start_sharing

    with pytest.raises(gr.Error, match=message):
        start_sharing(ctx, _Request(), user, password, lambda *a: pytest.fail("restarted"))
    assert not list(tmp_path.glob(".login-once-*"))


def test_only_admins_may_share_and_never_mid_reply(ctx):
    import dataclasses

    import gradio as gr

    from ui.share_panel import start_sharing, stop_sharing

    ctx.settings = dataclasses.replace(ctx.settings, auth=(("alice", "password1"), ("bob", "password2")),
                                       admins=("alice",))
    with pytest.raises(gr.Error, match="Only an admin"):
        start_sharing(ctx, _Request("bob"), None, None, lambda *a: pytest.fail("restarted"))
    with pytest.raises(gr.Error, match="not shared"):
        stop_sharing(ctx, _Request("alice"), lambda *a: pytest.fail("restarted"))
    ctx.manager._set(generating=True)
    with pytest.raises(gr.Error, match="A reply is being generated"):
        start_sharing(ctx, _Request("alice"), None, None, lambda *a: pytest.fail("restarted"))
    ctx.manager._set(generating=False)
    restarts = []
    start_sharing(ctx, _Request("alice"), None, None, lambda argv, before: restarts.append(argv))
    assert restarts == [["--ctx", "2048", "--listen"]]  # no new login: the app's own are kept by its argv


def test_a_refused_admin_action_is_one_log_line(ctx, capsys):
    import dataclasses

    import gradio as gr

    from ui.access import require_admin

    ctx.settings = dataclasses.replace(ctx.settings, auth=(("alice", "password1"), ("bob", "password2")),
                                       admins=("alice",))
    with pytest.raises(gr.Error) as err:
        require_admin(ctx, _Request("bob"), "unload the model")
    assert err.value.print_exception is False  # Gradio prints no traceback for it
    assert capsys.readouterr().out.strip().splitlines() == ["fitchat: refused: 'bob' may not unload the model (admins only)"]
