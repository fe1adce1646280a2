"""Bad command lines get one clear line and exit status 2, never a traceback."""
import subprocess
import sys

import pytest

from core.settings import check_credentials, parse_auth_file, parse_auth_pair
from tests.conftest import ROOT


def run_app(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args,expected", [
    (["--port", "0"], "--port must be 1..65535"),
    (["--port", "abc"], "invalid int value"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--ctx", "10000000"], "--ctx must be at most 1,048,576"),  # the flag the user typed, not the field
    (["--kv", "q8_0", "--no-flash-attn"], "flash attention"),
    (["--kv", "fp8"], "invalid choice"),
    (["--model", "/nonexistent/model.gguf"], "--model: model file not found"),
    (["--listen"], "refusing to serve on 0.0.0.0 without logins"),
    (["--listen", "--auth", "admin"], "--auth: expected user:password"),
    (["--listen", "--auth", "admin:short"], "shorter than 8"),
    (["--listen", "--auth-file", "/nonexistent/users"], "--auth-file"),
    (["--listen", "--host", "10.0.0.1", "--auth", "a:12345678"], "either --listen or --host"),
    (["--listen", "--auth", "a b:12345678"], "user names may use"),
    (["--listen", "--auth", "alice:12345678", "--admin", "bob"], "'bob' is not one of the users"),
    (["--listen", "--auth", "a:12345678", "--auth", "a:87654321"], "listed twice"),
    (["--api-key", "short"], "at least 16 characters"),
    (["--share"], "--share makes a public link: it needs --auth"),
    (["--share", "--insecure-no-auth"], "--share makes a public link"),
])
def test_bad_arguments_one_line(args, expected):
    out = run_app(*args)
    assert out.returncode == 2, out
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("fitchat: error:") and expected in lines[0], lines[0]
    assert "Traceback" not in out.stderr


def test_non_gguf_and_truncated_model_refused(bad_models):
    for key, expected in (("not_gguf", "not a GGUF file"), ("truncated", "truncated")):
        out = run_app("--model", str(bad_models[key]))
        assert out.returncode == 2
        assert expected in out.stderr and "Traceback" not in out.stderr


def test_help_lists_generated_option_flags():
    out = run_app("--help")
    assert out.returncode == 0
    for flag in ("--ctx", "--n-gpu-layers", "--kv", "--flash-attn", "--listen", "--auth", "--insecure-no-auth"):
        assert flag in out.stdout


def test_auth_parsing_and_constant_time_check():
    assert parse_auth_pair("alice:correct horse") == ("alice", "correct horse")
    users, admins = parse_auth_file("# team\nalice:password1:admin\n\nbob:password2:with:colons\n")
    assert users == (("alice", "password1"), ("bob", "password2:with:colons")) and admins == ("alice",)
    assert check_credentials(users, "bob", "password2:with:colons")
    assert not check_credentials(users, "bob", "password1")
    assert not check_credentials(users, "carol", "password1")
    with pytest.raises(ValueError, match="line 2"):
        parse_auth_file("alice:password1\nbroken\n")
    with pytest.raises(ValueError, match="no users"):
        parse_auth_file("# nothing\n")
