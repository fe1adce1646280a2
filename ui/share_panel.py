"""Share on your network: where others can open the app (with QR codes for phones), and, for the
admin, turning sharing on (with a login) or off. Either restarts FitChat in place
(``services.restart``), because Gradio fixes the address it serves and its logins at launch."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr

from core.settings import parse_auth_pair
from core.sharing import restart_argv
from services.network import lan_addresses
from ui.access import require_admin
from ui.context import AppContext

Restart = Callable[[list[str], Callable[[], None]], None]

# After the restart the page reloads itself: it waits for a server with another app id (the old
# one answers for a second or two more), then reloads, which shows the login page when sharing.
RELOAD_JS = """
async () => {
  const url = "gradio_api/app_id";
  const id = async () => (await (await fetch(url, {cache: "no-store"})).json()).app_id;
  const first = await id().catch(() => null);
  const poll = async () => {
    try { if ((await id()) !== first) { location.reload(); return; } } catch (e) {}
    setTimeout(poll, 700);
  };
  setTimeout(poll, 700);
}
"""


def share_html(ctx: AppContext) -> str:
    settings = ctx.settings
    if not settings.listens_beyond_loopback:
        return ""
    import segno

    urls = [f"http://{ip}:{settings.port}" for ip in lan_addresses()]
    if not urls:
        return "<p>Serving on the network, but this machine reports no LAN address.</p>"
    login = "login required" if settings.auth else "<b>no login: anyone on the network can use it</b>"
    items = "".join(
        f'<div style="display:inline-block;margin:6px;text-align:center"><img alt="QR code for {html.escape(u)}" '
        f'src="{segno.make(u).svg_data_uri(scale=4)}"><br><code>{html.escape(u)}</code></div>' for u in urls)
    return f"<p>Open FitChat from another device ({login}):</p>{items}"


def _loaded_gguf(ctx: AppContext) -> Optional[str]:
    """The GGUF to load after the restart, when it is not what the app loads anyway."""
    from services.paths import embedded_model_path

    spec = ctx.manager.state().spec
    if spec is None or spec.backend != "llama_cpp":
        return None
    default = ctx.settings.cli_model or (embedded_model_path() if ctx.settings.load_default_model else None)
    same = default is not None and Path(spec.model_path).resolve() == Path(default).resolve()
    return None if same else spec.model_path


def _refuse_while_busy(ctx: AppContext) -> None:
    if ctx.manager.state().generating or ctx.manager.queue_depth():
        raise gr.Error("A reply is being generated; restarting now would cut it off. Try again when it ends.")


def _confirmed_at_this_machine(ctx: AppContext, code: Any) -> None:
    """Without logins every caller is admin, so a bare API call from any local process could share
    the app: a person confirms with a code printed in the terminal where FitChat runs."""
    import time

    confirmation = ctx.share_confirmation
    if confirmation.confirm(code, time.monotonic()):
        return
    fresh = confirmation.issue(time.monotonic())
    if fresh:
        print(f"\nFitChat: a request to share this app on your network is waiting. If it was you, enter this "
              f"code on the app page: {fresh}\n(valid 5 minutes; if it was not you, ignore it.)\n", flush=True)
    raise gr.Error("To confirm, enter the code printed in the terminal where FitChat runs, then press Share again.")


def start_sharing(ctx: AppContext, request: Optional[gr.Request], user: Any, password: Any,
                  restart: Restart, code: Any = None) -> str:
    """Restart on the network. An app without logins gets this admin login first, confirmed with
    the code printed in the terminal."""
    require_admin(ctx, request, "share FitChat on the network")
    if ctx.settings.listens_beyond_loopback:
        raise gr.Error("FitChat is already shared on the network.")
    _refuse_while_busy(ctx)
    login_file = None
    if not ctx.settings.auth:
        if not isinstance(user, str) or not isinstance(password, str):
            raise gr.Error("Choose a user name and a password for the admin login.")
        try:
            user, password = parse_auth_pair(f"{user.strip()}:{password}")
        except ValueError as exc:
            raise gr.Error(f"Admin login: {exc}.") from None
        _confirmed_at_this_machine(ctx, code)
        from services.restart import write_login_file

        login_file = str(write_login_file(ctx.settings.data_dir, user, password))
    argv = restart_argv(list(ctx.settings.argv), share=True, login_file=login_file,
                        keep_logins=bool(ctx.settings.auth), model_path=_loaded_gguf(ctx))
    restart(argv, ctx.manager.close)
    return ("**Restarting on your network…** This page reloads by itself in a few seconds; log in with "
            "the admin login. Other devices open the addresses shown here afterwards.")


def stop_sharing(ctx: AppContext, request: Optional[gr.Request], restart: Restart) -> str:
    """Restart on this machine only (logins given on the command line stay; the one set here goes)."""
    require_admin(ctx, request, "stop sharing FitChat")
    if not ctx.settings.listens_beyond_loopback:
        raise gr.Error("FitChat is not shared on the network.")
    _refuse_while_busy(ctx)
    argv = restart_argv(list(ctx.settings.argv), share=False, keep_logins=True, model_path=_loaded_gguf(ctx))
    restart(argv, ctx.manager.close)
    return "**Restarting on this machine only…** This page reloads by itself in a few seconds."


def build(ctx: AppContext, restart: Optional[Restart] = None) -> None:
    if restart is None:
        from services.restart import restart_later as restart
    shared = ctx.settings.listens_beyond_loopback
    with gr.Accordion("Share on your network", open=False, elem_id="share-accordion"):
        if shared:
            gr.HTML(share_html(ctx), elem_id="share-panel")
            button = gr.Button("Stop sharing (restarts FitChat)", elem_id="share-stop", size="sm")
            fields: list = []
        else:
            gr.Markdown("Let phones and other computers on your network use FitChat. It restarts on your "
                        "network address and asks everyone for a login"
                        + ("." if ctx.settings.auth else ": choose the admin login here (8+ characters)."))
            fields = [] if ctx.settings.auth else [
                gr.Textbox(label="Admin user name", elem_id="share-user", max_lines=1),
                gr.Textbox(label="Admin password", type="password", elem_id="share-password", max_lines=1),
                gr.Textbox(label="Confirmation code (printed in the terminal when you press Share)",
                           elem_id="share-code", max_lines=1)]
            button = gr.Button("Share on my network (restarts FitChat)", elem_id="share-start", size="sm")
        note = gr.Markdown(elem_id="share-note")

    def on_start(request: gr.Request, user=None, password=None, code=None):
        return start_sharing(ctx, request, user, password, restart, code)

    def on_stop(request: gr.Request):
        return stop_sharing(ctx, request, restart)

    handler, name = (on_stop, "stop_sharing") if shared else (on_start, "start_sharing")
    button.click(handler, fields, note, api_name=name, concurrency_limit=1, concurrency_id="model-admin") \
        .success(None, None, None, js=RELOAD_JS)
