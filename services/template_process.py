"""Render chat templates in a child process whose limits one expression cannot bypass.

The in-process limits of ``core.chat_template`` are checked from a line tracer, so a single
filter call that allocates (``''|center(2000000000)``) runs to completion unchecked. Here every
render happens in a small long-lived child (``python -m services.template_process``) that caps
its own address space with ``RLIMIT_AS`` once its imports are done, and the parent kills it when
a render passes its wall-clock limit. A child that was killed or ran out of memory is replaced at
the next render. Requests and answers are JSON lines over pipes.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from typing import Optional

from core.chat_template import (DEFAULT_MAX_OUTPUT_CHARS, SAMPLE_CONVERSATION, TemplateRenderError,
                                TemplateSource)
from core.chat_template import render_chat_template as _render_here

DEFAULT_TIME_LIMIT_S = 1.0
DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024
_START_TIMEOUT_S = 30.0
_MAX_ANSWER_BYTES = DEFAULT_MAX_OUTPUT_CHARS * 4 + 4096  # JSON of the capped output, worst case


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TemplateProcess:
    """Thread-safe. ``render`` raises ``TemplateRenderError`` with a message for the user."""

    def __init__(self, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.time_limit_s = time_limit_s
        self.memory_bytes = memory_bytes
        self._proc: Optional[subprocess.Popen] = None
        self._lock = threading.Lock()
        self._buf = b""

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> None:
        root = _project_root()
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH", "")]))
        self._buf = b""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "services.template_process", "--memory-bytes", str(self.memory_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=root,
            env=dict(os.environ, PYTHONPATH=path), start_new_session=True)
        if self._read_line(_START_TIMEOUT_S) != b'"ready"':
            self._kill()
            raise TemplateRenderError("The chat template renderer did not start.")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.kill()
        except OSError:
            pass
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def _read_line(self, timeout: float) -> Optional[bytes]:
        """One answer line; None when the child took too long or is gone."""
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or len(self._buf) > _MAX_ANSWER_BYTES:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def render(self, template: str, messages: list[dict], *, bos_token: str = "", eos_token: str = "",
               add_generation_prompt: bool = True) -> str:
        request = json.dumps({"template": template, "messages": messages, "bos_token": bos_token,
                              "eos_token": eos_token, "add_generation_prompt": add_generation_prompt,
                              "time_limit_s": self.time_limit_s}).encode() + b"\n"
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._kill()
                self._start()
            try:
                self._proc.stdin.write(request)
                self._proc.stdin.flush()
            except OSError:
                self._kill()
                raise TemplateRenderError("The chat template renderer stopped; try again.") from None
            # The child's own tracer stops most slow templates first; this kill is the backstop.
            line = self._read_line(self.time_limit_s + 1.0)
            if line is None:
                gone = self._proc.poll() is not None
                self._kill()
                if gone:
                    raise TemplateRenderError(
                        "The chat template was stopped: it used more than "
                        f"{self.memory_bytes // (1024 * 1024)} MiB of memory.")
                raise TemplateRenderError(
                    f"The chat template was stopped: it took longer than {self.time_limit_s:g} s.")
        answer = json.loads(line)
        if "error" in answer:
            if answer.get("fatal"):
                with self._lock:
                    self._kill()  # after a MemoryError the child is not trusted again
            raise TemplateRenderError(answer["error"])
        return answer["text"]

    def check(self, source: TemplateSource, bos_token: str = "", eos_token: str = "") -> str:
        """Render a sample conversation so a hostile or broken template fails at load, not mid-chat.
        Some templates reject system messages; retry without one before giving up."""
        try:
            return self.render(source.text, [dict(m) for m in SAMPLE_CONVERSATION],
                               bos_token=bos_token, eos_token=eos_token)
        except TemplateRenderError as first:
            if "refused" not in str(first):
                raise
            return self.render(source.text, [dict(m) for m in SAMPLE_CONVERSATION[1:]],
                               bos_token=bos_token, eos_token=eos_token)

    def close(self) -> None:
        with self._lock:
            self._kill()


_shared: Optional[TemplateProcess] = None
_shared_lock = threading.Lock()


def shared_renderer() -> TemplateProcess:
    """The process-wide renderer (one child per worker or UI process)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TemplateProcess()
        return _shared


def render_chat_template(template: str, messages: list[dict], *, bos_token: str = "", eos_token: str = "",
                         add_generation_prompt: bool = True) -> str:
    """``core.chat_template.render_chat_template`` with limits enforced by the child process."""
    return shared_renderer().render(template, messages, bos_token=bos_token, eos_token=eos_token,
                                    add_generation_prompt=add_generation_prompt)


def check_template(source: TemplateSource, bos_token: str = "", eos_token: str = "") -> str:
    return shared_renderer().check(source, bos_token, eos_token)


_MAX_TOKENIZER_CONFIG_BYTES = 16 * 1024 * 1024


def transformers_template_text(folder: str) -> Optional[str]:
    """The chat template a transformers tokenizer in ``folder`` would use (None when it has none)."""
    from pathlib import Path

    root = Path(folder)
    jinja = root / "chat_template.jinja"
    if jinja.is_file() and not jinja.is_symlink() and jinja.stat().st_size <= _MAX_TOKENIZER_CONFIG_BYTES:
        return jinja.read_text(encoding="utf-8", errors="replace")
    config = root / "tokenizer_config.json"
    if not config.is_file() or config.is_symlink() or config.stat().st_size > _MAX_TOKENIZER_CONFIG_BYTES:
        return None
    try:
        raw = json.loads(config.read_text(encoding="utf-8", errors="replace")).get("chat_template")
    except (ValueError, AttributeError):
        return None
    if isinstance(raw, list):  # several named templates: the default one, as transformers does
        named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
        raw = named.get("default") or next(iter(named.values()), None)
    return raw if isinstance(raw, str) else None


# -- the child -------------------------------------------------------------------------------
def _cap_address_space(extra_bytes: int) -> None:
    import resource

    with open("/proc/self/statm") as fh:
        current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = current + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _serve(memory_bytes: int) -> int:
    _cap_address_space(memory_bytes)
    out = sys.stdout.buffer
    out.write(b'"ready"\n')
    out.flush()
    for raw in sys.stdin.buffer:
        fatal = False
        try:
            req = json.loads(raw)
            text = _render_here(
                req["template"], req["messages"], bos_token=req["bos_token"], eos_token=req["eos_token"],
                add_generation_prompt=req["add_generation_prompt"], time_limit_s=req["time_limit_s"],
                max_memory_growth=memory_bytes)
            answer = {"text": text}
        except TemplateRenderError as exc:
            answer = {"error": str(exc)}
        except MemoryError:
            answer = {"error": "The chat template was stopped: it used more than "
                               f"{memory_bytes // (1024 * 1024)} MiB of memory.", "fatal": True}
            fatal = True
        except Exception as exc:  # noqa: BLE001 - anything else is the template's fault too
            answer = {"error": f"The chat template failed: {type(exc).__name__}: {str(exc)[:200]}"}
        try:
            line = json.dumps(answer).encode() + b"\n"
        except MemoryError:
            line, fatal = (b'{"error": "The chat template was stopped: its output did not fit in memory.", '
                           b'"fatal": true}\n'), True
        out.write(line)
        out.flush()
        if fatal:
            return 1
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="fitchat-template")
    parser.add_argument("--memory-bytes", type=int, default=DEFAULT_MEMORY_BYTES)
    sys.exit(_serve(parser.parse_args().memory_bytes))
