import time

import pytest

from core.chat_template import (CHATML_TEMPLATE, TemplateRenderError, check_template, choose_template,
                                render_chat_template)

SMOL = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are SmolLM<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
MSGS = [{"role": "user", "content": "Hi"}]


def test_renders_a_real_template():
    out = render_chat_template(SMOL, MSGS)
    assert out == "<|im_start|>system\nYou are SmolLM<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_fallback_is_chatml_and_says_so():
    src = choose_template(None)
    assert src.is_fallback and src.origin == "chatml-fallback" and "<|im_end|>" in src.stop
    assert choose_template("  ").is_fallback
    assert not choose_template(SMOL).is_fallback
    assert render_chat_template(CHATML_TEMPLATE, MSGS).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("payload", [
    "{{ cycler.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ messages.append({'role': 'x'}) }}",
    "{{ self.__dict__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
])
def test_sandbox_escapes_are_blocked_without_side_effects(payload, tmp_path):
    canary = tmp_path / "canary"
    with pytest.raises(TemplateRenderError) as err:
        render_chat_template(payload.replace("CANARY", str(canary)), MSGS)
    assert not canary.exists()
    assert "chat template" in str(err.value)


def test_nested_loops_hit_the_time_limit():
    bomb = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(TemplateRenderError, match="took too long"):
        render_chat_template(bomb, MSGS, time_limit_s=0.5)
    assert time.monotonic() - started < 3


def test_output_size_is_capped():
    bomb = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"
    with pytest.raises(TemplateRenderError, match="more than"):
        render_chat_template(bomb, MSGS, max_output_chars=100_000)


def test_huge_repetition_is_refused():
    with pytest.raises(TemplateRenderError, match="too large"):
        render_chat_template("{{ 'x' * 10000000000 }}", MSGS)
    with pytest.raises(TemplateRenderError, match="too large"):
        render_chat_template("{{ 9 ** 99999999 }}", MSGS)


def test_string_doubling_is_stopped():
    bomb = ("{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(64) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}")
    with pytest.raises(TemplateRenderError):
        render_chat_template(bomb, MSGS, time_limit_s=1.0, max_memory_growth=64 * 2**20)


def test_raise_exception_and_syntax_errors_are_readable():
    with pytest.raises(TemplateRenderError, match="refused the conversation: roles must alternate"):
        render_chat_template("{{ raise_exception('roles must alternate') }}", MSGS)
    with pytest.raises(TemplateRenderError, match="does not parse"):
        render_chat_template("{% for %}", MSGS)


def test_common_template_helpers_work():
    out = render_chat_template("{{ bos_token }}{{ messages | tojson }}{{ strftime_now('%Y') | length }}",
                               [{"role": "user", "content": "é<b>"}], bos_token="<s>")
    assert out.startswith('<s>[{"role": "user", "content": "é<b>"}]4')


def test_check_template_retries_without_system_message():
    no_system = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
                 "{% endif %}{{ m['content'] }}{% endfor %}")
    assert "Hello!" in check_template(choose_template(no_system))
    with pytest.raises(TemplateRenderError):
        check_template(choose_template("{{ cycler.__init__.__globals__ }}"))
