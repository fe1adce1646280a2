"""Chat templates render in a child process whose memory and time limits one expression cannot
bypass (issue 13, hole 1), at load and per reply; a template that fails its check leaves the
model that was serving loaded."""
from __future__ import annotations

import os
import resource
import signal
import threading
import time

import pytest

from backends.base import LoadSpec, TemplateError
from backends.manager import ModelManager
from core.chat_template import CHATML_TEMPLATE, TemplateRenderError
from core.options import LoadOptions, SamplingOptions
from services.template_process import TemplateProcess
from tests.gguf_factory import copy_gguf

ONE_EXPRESSION = "{{ ''|center(2000000000) }}"
DOUBLING = ("{% set s = namespace(v='xxxxxxxx') %}{% for i in range(40) %}{% set s.v = s.v ~ s.v %}"
            "{% endfor %}{{ s.v|length }}")
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def renderer():
    proc = TemplateProcess(time_limit_s=1.0, memory_bytes=256 * 1024 * 1024)
    yield proc
    proc.close()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("template", [ONE_EXPRESSION, DOUBLING,
                                      "{{ ('x' * 1000000)|center(900000000)|length }}",
                                      "{{ ('ab' * 500000)|indent(2000)|wordwrap(3)|length }}",
                                      "{{ ('%s' * 1000000) % ((('x' * 1000),) * 1000000) }}"],
                         ids=["center", "doubling", "center-of-repeat", "indent", "percent"])
def test_one_expression_cannot_pass_the_memory_limit(renderer, template):
    before = _peak_rss_mib()
    started = time.monotonic()
    with pytest.raises(TemplateRenderError, match="memory|too long|took|too large|stopped"):
        renderer.render(template, HELLO)
    assert time.monotonic() - started < 4.0
    assert _peak_rss_mib() - before < 32  # the caller's memory is untouched
    # The renderer is replaced and works again at once.
    assert renderer.render(CHATML_TEMPLATE, HELLO).endswith("<|im_start|>assistant\n")


def test_a_render_that_never_answers_is_killed_by_the_wall_clock(renderer):
    # The child's own tracer stops slow Python; a render stuck in native code (here: a stopped
    # child) is killed by the parent's wall clock.
    renderer.render(CHATML_TEMPLATE, HELLO)
    pid = renderer.pid
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(TemplateRenderError, match="took longer than 1 s"):
        renderer.render(CHATML_TEMPLATE, HELLO)
    assert time.monotonic() - started < 3.0
    assert not os.path.exists(f"/proc/{pid}/status") or "zombie" in open(f"/proc/{pid}/status").read()
    assert renderer.render(CHATML_TEMPLATE, HELLO) and renderer.pid != pid


def test_slow_python_in_the_template_is_stopped(renderer):
    template = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(TemplateRenderError, match="took too long|took longer"):
        renderer.render(template, HELLO)
    assert time.monotonic() - started < 3.0


def test_a_hostile_gguf_template_is_refused_and_the_serving_model_stays(tmp_path, embedded_model):
    hostile = copy_gguf(embedded_model, tmp_path / "center.gguf", {"tokenizer.chat_template": ONE_EXPRESSION})
    manager = ModelManager()
    try:
        first = manager.load(LoadSpec(str(embedded_model), LoadOptions(n_ctx=512)))
        with pytest.raises(TemplateError, match="memory"):
            manager.load(LoadSpec(str(hostile), LoadOptions(n_ctx=512)))
        state = manager.state()
        assert state.status == "ready" and state.info.worker_pid == first.worker_pid
        stream = manager.stream_chat(HELLO, SamplingOptions(max_tokens=4, temperature=0.0), threading.Event())
        assert list(stream) is not None and stream.stats.completion_tokens > 0
    finally:
        manager.close()
