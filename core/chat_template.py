"""Render a model's chat template safely.

Templates come from model files, i.e. from strangers. They render only in Jinja's
``ImmutableSandboxedEnvironment``, under a wall-clock deadline, an output-size cap and a cap on
memory growth, enforced by a line tracer on the rendering thread (the sandbox alone caps
``range`` but not nested loops or string doubling).
"""
from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional

import jinja2
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# A ChatML template for models that carry none. The UI says when it is in use.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_STOP = ("<|im_end|>", "<|im_start|>")

MAX_TEMPLATE_CHARS = 256 * 1024
DEFAULT_TIME_LIMIT_S = 1.0
DEFAULT_MAX_OUTPUT_CHARS = 4 * 1024 * 1024
DEFAULT_MAX_MEMORY_GROWTH = 256 * 1024 * 1024
_MAX_REPEAT_RESULT = 1024 * 1024


class TemplateRenderError(Exception):
    """The template is broken, unsafe or too expensive. The message is meant for the user."""


class _Limits(Exception):
    pass


@dataclass(frozen=True)
class TemplateSource:
    text: str
    origin: str  # "gguf" | "tokenizer" | "chatml-fallback"
    stop: tuple[str, ...] = ()

    @property
    def is_fallback(self) -> bool:
        return self.origin == "chatml-fallback"


def choose_template(model_template: Optional[str], origin: str = "gguf") -> TemplateSource:
    """The model's own template, or the ChatML fallback when it has none."""
    if model_template and model_template.strip():
        return TemplateSource(model_template, origin)
    return TemplateSource(CHATML_TEMPLATE, "chatml-fallback", CHATML_STOP)


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    """Sandbox that also refuses huge repetitions (``'x' * 10**9``) and huge powers."""

    intercepted_binops = frozenset(["*", "**"])

    def unsafe_undefined(self, obj, attribute):
        # Jinja returns a silent Undefined here; a template that probes internals is hostile: stop it.
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} object is unsafe")

    def call_binop(self, context, operator, left, right):  # noqa: D401 - jinja hook
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    if len(seq) * max(n, 0) > _MAX_REPEAT_RESULT:
                        raise SecurityError("repetition result too large")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise SecurityError("exponent too large")
        return super().call_binop(context, operator, left, right)


def _raise_exception(message: str) -> None:
    raise TemplateRenderError(f"The chat template refused the conversation: {message}")


def _tojson(value: Any, indent: Optional[int] = None) -> str:
    # Same as transformers: no HTML escaping, keep unicode.
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_environment() -> _GuardedEnvironment:
    env = _GuardedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"],
        undefined=jinja2.Undefined,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux; a high-water mark, so growth past the limit is never missed.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _install_tracer(deadline: float, rss_limit: int) -> Callable:
    counter = [0]

    def local(frame, event, arg):
        if event == "line":
            counter[0] += 1
            if time.monotonic() > deadline:
                raise _Limits("took too long")
            if counter[0] % 64 == 0 and _peak_rss_bytes() > rss_limit:
                raise _Limits("used too much memory")
        return local

    def global_trace(frame, event, arg):
        return local

    return global_trace


def render_chat_template(
    template: str,
    messages: list[dict],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
    max_memory_growth: int = DEFAULT_MAX_MEMORY_GROWTH,
) -> str:
    """Render ``template`` for ``messages``; raise TemplateRenderError on anything unsafe or broken."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateRenderError(
            f"The chat template is {len(template)} characters; the limit is {MAX_TEMPLATE_CHARS}.")
    env = _make_environment()
    try:
        compiled = env.from_string(template)
    except TemplateError as exc:
        raise TemplateRenderError(f"The chat template does not parse: {exc}") from exc

    context = {
        "messages": messages,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "add_generation_prompt": add_generation_prompt,
        "tools": None,
        "documents": None,
    }
    deadline = time.monotonic() + time_limit_s
    tracer = _install_tracer(deadline, _peak_rss_bytes() + max_memory_growth)
    previous = sys.gettrace()
    pieces: list[str] = []
    size = 0
    sys.settrace(tracer)
    try:
        for piece in compiled.generate(**context):
            size += len(piece)
            if size > max_output_chars:
                raise _Limits(f"produced more than {max_output_chars} characters")
            pieces.append(piece)
    except _Limits as exc:
        raise TemplateRenderError(f"The chat template was stopped: it {exc}.") from None
    except SecurityError as exc:
        raise TemplateRenderError(f"The chat template was blocked by the sandbox: {exc}") from None
    except TemplateRenderError:
        raise
    except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError,
            ZeroDivisionError, OverflowError, RecursionError) as exc:
        raise TemplateRenderError(f"The chat template failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.settrace(previous)
    return "".join(pieces)


SAMPLE_CONVERSATION = (
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi. How can I help?"},
    {"role": "user", "content": "Tell me a fact."},
)


def check_template(source: TemplateSource, bos_token: str = "", eos_token: str = "") -> str:
    """Render a sample conversation so a hostile or broken template fails at load, not mid-chat.

    Some templates reject system messages; retry without one before giving up.
    """
    try:
        return render_chat_template(source.text, [dict(m) for m in SAMPLE_CONVERSATION],
                                    bos_token=bos_token, eos_token=eos_token)
    except TemplateRenderError as first:
        if "refused" not in str(first):
            raise
        return render_chat_template(source.text, [dict(m) for m in SAMPLE_CONVERSATION[1:]],
                                    bos_token=bos_token, eos_token=eos_token)


def continues_reply(messages: list[dict]) -> bool:
    """A conversation that ends with an assistant message asks to continue that message (the
    Continue button; on the API, a trailing assistant message)."""
    return bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant"


def render_prompt(render: Callable[..., str], template: str, messages: list[dict], *, bos_token: str = "",
                  eos_token: str = "") -> str:
    """The prompt for ``messages`` through ``render`` (``render_chat_template`` or the process-isolated
    one). A new reply gets the generation prompt; a trailing assistant message is continued: the
    conversation is rendered without a generation prompt and cut right after that message's text, so
    no end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ...) separates it from the continuation."""
    if not continues_reply(messages):
        return render(template, messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=True)
    text = render(template, messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=False)
    content = messages[-1].get("content")
    if not isinstance(content, str):
        raise TemplateRenderError("Only a text reply can be continued.")
    tail = content.rstrip()  # templates often trim; the continuation starts after the visible text
    if not tail:
        raise TemplateRenderError("There is no reply text to continue.")
    at = text.rfind(tail)
    if at < 0:
        raise TemplateRenderError("This model's chat template changes the reply's text, so it cannot be "
                                  "continued; send a new message instead.")
    return text[: at + len(tail)]
