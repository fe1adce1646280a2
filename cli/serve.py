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
from core.settings import LOOPBACK, AppSettings, parse_auth_file, parse_auth_pair


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
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="allow --listen without logins (anyone on the network can use the app)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where models and app data live (default ~/.local/share/fitchat)")
    parser.add_argument("--no-default-model", action="store_true",
                        help="start without loading a model")
    names = add_option_flags(parser, LoadOptions)
    return parser, names


def settings_from_args(argv: list[str]) -> AppSettings:
    from services.gguf_file import read_header
    from services.paths import default_data_dir

    parser, load_names = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be 1..65535 (got {args.port})")
    if args.listen and args.host not in (None, "0.0.0.0"):
        raise UsageError("use either --listen or --host, not both")
    host = "0.0.0.0" if args.listen else (args.host or LOOPBACK)

    auth: list[tuple[str, str]] = []
    for pair in args.auth or []:
        try:
            auth.append(parse_auth_pair(pair))
        except ValueError as exc:
            raise UsageError(f"--auth: {exc}") from None
    if args.auth_file:
        try:
            auth.extend(parse_auth_file(args.auth_file.read_text(encoding="utf-8")))
        except OSError as exc:
            raise UsageError(f"--auth-file {args.auth_file}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageError(f"--auth-file {args.auth_file}: {exc}") from None

    settings = AppSettings(
        host=host, port=args.port, data_dir=(args.data_dir or default_data_dir()).expanduser(),
        cli_model=args.model.expanduser() if args.model else None,
        load_options=options_from_args(LoadOptions, args, load_names), auth=tuple(auth),
        insecure_no_auth=args.insecure_no_auth, load_default_model=not args.no_default_model,
    )
    if settings.listens_beyond_loopback and not settings.auth and not settings.insecure_no_auth:
        raise UsageError(f"refusing to serve on {host} without logins: add --auth USER:PASSWORD or "
                         "--auth-file FILE (or --insecure-no-auth if you really mean it)")
    if settings.cli_model is not None:
        try:
            read_header(settings.cli_model)
        except GGUFError as exc:
            raise UsageError(f"--model: {exc}") from None
    return settings


def _print_urls(settings: AppSettings) -> None:
    from services.network import lan_addresses

    if settings.listens_beyond_loopback:
        urls = [f"http://{ip}:{settings.port}" for ip in lan_addresses()] or [f"http://<this machine>:{settings.port}"]
        login = "login required" if settings.auth else "NO LOGIN: anyone on the network can use it"
        print(f"FitChat is on your network ({login}):", *urls, sep="\n  ", flush=True)
    print(f"FitChat: http://{LOOPBACK if settings.host in ('0.0.0.0', LOOPBACK) else settings.host}:{settings.port}",
          flush=True)


def run(argv: list[str]) -> int:
    started = time.monotonic()
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
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.data_dir / "gradio-tmp"))
    from cli.launch import launch

    return launch(settings, started)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
