"""Serve the web app: ``python app.py [--model PATH] [--host/--port] [--listen --auth ...]``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from cli.args import OneLineParser, UsageError, add_option_flags, options_from_args
from core.gguf_header import GGUFError
from core.options import LoadOptions
from core.sharing import SECRET_FLAGS, split_secret_flags
from core.settings import LOOPBACK, AppSettings, parse_api_keys, parse_auth_file, parse_auth_pair


def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    parser = OneLineParser(prog="app.py", description="FitChat: chat with a local LLM in your browser.")
    parser.add_argument("--model", type=Path, help="GGUF file to load (default: the embedded SmolLM2-135M)")
    parser.add_argument("--host", default=None, help=f"address to bind (default {LOOPBACK})")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--listen", action="store_true",
                        help="serve on the local network (binds 0.0.0.0; needs --auth or --auth-file)")
    parser.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                        help="a login for the web UI; repeat for more users")
    parser.add_argument("--auth-file", type=Path, help="file with one USER:PASSWORD per line")
    parser.add_argument("--admin", action="append", metavar="USER",
                        help="a user who may load, unload, download and delete models (default: the first user)")
    parser.add_argument("--api-key", action="append", metavar="KEY",
                        help="a key for the OpenAI-compatible API (/v1); needed when serving beyond this machine")
    parser.add_argument("--api-key-file", type=Path, help="file with one API key per line")
    parser.add_argument("--allowed-host", action="append", metavar="NAME", default=[],
                        help="with --listen: another Host name the app may be reached by (a DNS name, a proxy's "
                             "name); its own addresses and host name are always allowed")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="allow --listen without logins (anyone on the network can use the app)")
    parser.add_argument("--share", action="store_true",
                        help="also make a public gradio.live link (needs --auth; anyone with the link can try to log in)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where models and app data live (default ~/.local/share/fitchat)")
    parser.add_argument("--no-default-model", action="store_true",
                        help="start without loading a model")
    parser.add_argument("--remote", metavar="URL",
                        help="chat through a remote OpenAI-compatible server (vLLM, llama-server, Ollama, another "
                             "FitChat) instead of a local model; kept as the endpoint 'cli' in the Models tab")
    parser.add_argument("--remote-model", metavar="ID", help="the remote model to use (default: the first it lists)")
    parser.add_argument("--remote-key-file", type=Path,
                        help="file holding the remote server's API key (a key on the command line would show in ps)")
    # Logins set in the UI when it turns sharing on: read once, then deleted (services/restart.py).
    parser.add_argument("--login-file-once", type=Path, help=argparse.SUPPRESS)
    names = add_option_flags(parser, LoadOptions)
    return parser, names


def move_secrets_to_environment(argv: list[str], environ=os.environ) -> tuple[list[str], list[str]]:
    """``--auth``/``--api-key`` values go into ``FITCHAT_AUTH``/``FITCHAT_API_KEY`` (one per line);
    returns the command line without them and one warning per flag found."""
    rest, found = split_secret_flags(argv)
    warnings = []
    for flag, values in found.items():
        env = SECRET_FLAGS[flag]
        environ[env] = "\n".join(filter(None, [environ.get(env, ""), *values]))
        alternative = "--auth-file FILE" if flag == "--auth" else "--api-key-file FILE"
        warnings.append(f"fitchat: warning: {flag} on the command line is readable by every user of this machine "
                        f"(ps); use {alternative} or the {env} environment variable. FitChat restarts itself "
                        "now without it on the command line.")
    return rest, warnings


def _from_environment(environ, name: str, parse, flag: str):
    text = environ.get(name, "")
    if not text.strip():
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise UsageError(f"{name}: {exc}") from None


def settings_from_args(argv: list[str], environ=None) -> AppSettings:
    from services.gguf_file import read_header
    from services.paths import default_data_dir

    environ = os.environ if environ is None else environ
    parser, load_names = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be 1..65535 (got {args.port})")
    if args.listen and args.host not in (None, "0.0.0.0"):
        raise UsageError("use either --listen or --host, not both")
    host = "0.0.0.0" if args.listen else (args.host or LOOPBACK)

    auth: list[tuple[str, str]] = []
    admins: list[str] = list(args.admin or [])
    for pair in args.auth or []:
        try:
            auth.append(parse_auth_pair(pair))
        except ValueError as exc:
            raise UsageError(f"--auth: {exc}") from None
    for path, flag in ((args.auth_file, "--auth-file"), (args.login_file_once, "--login-file-once")):
        if path:
            users, file_admins = parse_file(path, flag, parse_auth_file)
            auth.extend(users)
            admins.extend(file_admins)
    from_env = _from_environment(environ, "FITCHAT_AUTH", parse_auth_file, "--auth")
    if from_env:
        auth.extend(from_env[0])
        admins.extend(from_env[1])
    if args.login_file_once:
        args.login_file_once.unlink(missing_ok=True)  # read once: its password stays nowhere on disk
    names = [user for user, _ in auth]
    if len(set(names)) != len(names):
        raise UsageError("a user is listed twice in --auth / --auth-file")
    unknown = [a for a in admins if a not in names]
    if unknown:
        raise UsageError(f"--admin {unknown[0]!r} is not one of the users given with --auth / --auth-file")
    if auth and not admins:
        admins = [auth[0][0]]
    api_keys = list(args.api_key or [])
    if args.api_key_file:
        api_keys.extend(parse_file(args.api_key_file, "--api-key-file", parse_api_keys))
    api_keys.extend(_from_environment(environ, "FITCHAT_API_KEY", parse_api_keys, "--api-key") or ())
    try:
        parse_api_keys("\n".join(api_keys))
    except ValueError as exc:
        raise UsageError(f"--api-key: {exc}") from None

    remote = None
    if args.remote_model and not args.remote:
        raise UsageError("--remote-model needs --remote URL")
    if args.remote_key_file and not args.remote:
        raise UsageError("--remote-key-file needs --remote URL")
    if args.remote:
        if args.model:
            raise UsageError("use either --model or --remote, not both")
        from core.remote import RemoteConfigError, make_endpoint

        key = parse_file(args.remote_key_file, "--remote-key-file", str.strip) if args.remote_key_file else None
        try:
            endpoint = make_endpoint("cli", args.remote, key)
        except RemoteConfigError as exc:
            raise UsageError(f"--remote: {exc}") from None
        remote = (endpoint, (args.remote_model or "").strip()[:200])

    settings = AppSettings(
        host=host, port=args.port, data_dir=(args.data_dir or default_data_dir()).expanduser(),
        cli_model=args.model.expanduser() if args.model else None,
        load_options=options_from_args(LoadOptions, args, load_names), auth=tuple(auth), admins=tuple(admins),
        api_keys=tuple(api_keys), insecure_no_auth=args.insecure_no_auth, share=args.share,
        load_default_model=not args.no_default_model, allowed_hosts=tuple(_host_names(args.allowed_host)), argv=tuple(split_secret_flags(argv)[0]), remote=remote,
    )
    if args.share and not settings.auth:
        raise UsageError("--share makes a public link: it needs --auth or --auth-file (--insecure-no-auth "
                         "does not apply to public links)")
    if settings.listens_beyond_loopback and not settings.auth and not settings.insecure_no_auth:
        raise UsageError(f"refusing to serve on {host} without logins: add --auth USER:PASSWORD or "
                         "--auth-file FILE (or --insecure-no-auth if you really mean it)")
    if settings.cli_model is not None:
        try:
            read_header(settings.cli_model)
        except GGUFError as exc:
            raise UsageError(f"--model: {exc}") from None
    return settings


def _host_names(values: list[str]) -> list[str]:
    import re

    for value in values:
        if not re.fullmatch(r"[A-Za-z0-9.\-:\[\]]{1,253}", value):
            raise UsageError(f"--allowed-host {value[:80]!r}: give a host name or address, without scheme or port")
    return [v.lower() for v in values]


def parse_file(path: Path, flag: str, parse):
    try:
        return parse(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{flag} {path}: {exc}") from None


def run(argv: list[str]) -> int:
    started = time.monotonic()
    if split_secret_flags(argv)[1]:
        if not any(a.split("=", 1)[0] == "--login-file-once" for a in argv):
            settings_from_args(argv)  # a bad value is reported now, as the flag the user typed
        rest, warnings = move_secrets_to_environment(argv)
        for line in warnings:
            print(line, file=sys.stderr, flush=True)
        from services.paths import project_root

        # Same process (PID, terminal), new command line: the secrets leave `ps` at once.
        os.execv(sys.executable, [sys.executable, str(project_root() / "app.py"), *rest])
    settings = settings_from_args(argv)
    from services.network import port_is_free

    if not port_is_free(settings.host, settings.port):
        raise UsageError(f"port {settings.port} on {settings.host} is already in use: pick another with --port")
    try:
        settings.models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the data folder {settings.data_dir}: {exc.strerror or exc}") from None

    # Before Gradio is imported: no telemetry or version checks, and a private temp folder.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    # Gradio's upload/download cache: private, and outside the data folder, which is blocked from serving.
    # Folders of apps killed with SIGKILL (their atexit never ran) go now; a live app's stay.
    from services import temp_folders

    swept = temp_folders.sweep_stale()
    if swept:
        print(f"fitchat: removed {len(swept)} temp folder(s) left by FitChat apps that were killed", flush=True)
    inherited = os.environ.get("GRADIO_TEMP_DIR")
    if inherited is None:  # kept across in-place restarts (execv: same PID, inherited), removed at exit
        os.environ["GRADIO_TEMP_DIR"] = str(temp_folders.make_folder("fitchat-gradio-"))
    if inherited is None or temp_folders.owned_by_this_process(Path(inherited)):
        import atexit
        import shutil

        atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], True)
    from cli.launch import launch

    return launch(settings, started)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
