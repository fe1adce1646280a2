"""Continue: a trailing assistant message is extended through the chat template without an
end-of-turn before the continuation (ChatML, Llama-3, a template without a generation prompt), on
the engine (prefix cache reused) and on the API."""
from __future__ import annotations

import pytest

from core.chat_template import CHATML_TEMPLATE, TemplateRenderError, continues_reply, render_chat_template, render_prompt

LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
NO_GEN_PROMPT = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
CUT = [{"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "One, two, three,"}]


def test_a_new_reply_gets_the_generation_prompt():
    msgs = CUT[:1]
    assert not continues_reply(msgs) and continues_reply(CUT)
    assert render_prompt(render_chat_template, CHATML_TEMPLATE, msgs).endswith("<|im_start|>assistant\n")


def test_chatml_continues_without_im_end():
    prompt = render_prompt(render_chat_template, CHATML_TEMPLATE, CUT)
    assert prompt == "<|im_start|>user\nCount to five.<|im_end|>\n<|im_start|>assistant\nOne, two, three,"
    assert prompt.count("<|im_start|>assistant") == 1


def test_llama3_continues_without_eot_and_with_one_bos():
    prompt = render_prompt(render_chat_template, LLAMA3, CUT, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    assert prompt == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nCount to five.<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\nOne, two, three,")
    # trailing spaces of the cut reply are trimmed by this template: the continuation starts after the text
    spaced = [CUT[0], {"role": "assistant", "content": "One, two,  "}]
    assert render_prompt(render_chat_template, LLAMA3, spaced).endswith("\n\nOne, two,")


def test_a_template_without_generation_prompt():
    assert render_prompt(render_chat_template, NO_GEN_PROMPT, CUT) == "[user] Count to five.\n[assistant] One, two, three,"
    assert render_prompt(render_chat_template, NO_GEN_PROMPT, CUT[:1]) == "[user] Count to five.\n"


def test_what_cannot_be_continued_is_refused_clearly():
    with pytest.raises(TemplateRenderError, match="no reply text"):
        render_prompt(render_chat_template, CHATML_TEMPLATE, [CUT[0], {"role": "assistant", "content": "  "}])
    upper = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    with pytest.raises(TemplateRenderError, match="cannot be continued"):
        render_prompt(render_chat_template, upper, CUT)


@pytest.mark.real_model
def test_engine_continues_a_cut_reply_reusing_the_prefix_cache(embedded_model):
    import threading

    from backends.base import LoadSpec
    from backends.worker_client import WorkerBackend
    from core.options import LoadOptions, SamplingOptions

    user = {"role": "user", "content": "Count from one to thirty in words, separated by commas."}
    greedy = SamplingOptions(max_tokens=8, temperature=0.0, seed=1)
    backend = WorkerBackend()
    try:
        backend.load(LoadSpec(str(embedded_model), LoadOptions(n_ctx=512, n_threads=2)))
        first = backend.stream_chat([user], greedy, threading.Event())
        cut = "".join(first)
        assert first.stats.finish_reason == "length" and cut.strip()
        more = backend.stream_chat([user, {"role": "assistant", "content": cut}], greedy, threading.Event())
        assert "".join(more)
        # the first prompt (and the reply's tokens) came from the cache; nothing was inserted between
        assert more.stats.cached_prompt_tokens >= first.stats.prompt_tokens
        grown = more.stats.prompt_tokens - first.stats.prompt_tokens
        assert first.stats.completion_tokens - 1 <= grown <= first.stats.completion_tokens + 1
    finally:
        backend.unload()
