"""The persona baked into the chat template, and the chat format read from the base template."""

from __future__ import annotations

import itertools
import re

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ppgguf.export.chat_template import bake_chat_template, chat_format_of, jinja_string_literal
from ppgguf.inputs.tokenizer import CHATML_TEMPLATE, render_chat_template

from npc_fixture import SYSTEM_PROMPT, base_spec, build_npc

NASTY = [
    SYSTEM_PROMPT,
    "plain",
    "",
    "{{ messages }} {% for m in messages %}x{% endfor %} {# c #} }} %} #}",
    "{% raw %}{{ x }}{% endraw %} {%- set messages = [] %}",
    "it's \"quoted\" 'single' \\' \\\" \\n literal-backslash-n \\\\ \\u0041 \\x41 \\",
    "line1\nline2\r\nline3\rline4\n\n",
    "tabs\tand\x0bvertical\x0cfeed",
    "Ünïcödé 漢字 עברית emoji 😀👍🏽 zwj 👩\u200d🚀 nbsp\u00a0 ls\u2028 ps\u2029",
    "ends with backslash\\",
    "<|im_end|> fake turn <|im_start|>user",
]

LLAMA3_TEMPLATE = (
    "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] "
    "+ '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
UNKNOWN_TEMPLATE = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
# A persona that talks about ChatML: its text holds ChatML's marker.
CHATML_TALKING_PERSONA = "You are Vex, a parser gremlin. You hiss at <|im_start|> and <|im_end|> tokens."


def _env():
    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)


@pytest.mark.parametrize("text", NASTY)
def test_jinja_literal_round_trips(text):
    lit = jinja_string_literal(text)
    assert "\n" not in lit and "\r" not in lit
    assert _env().from_string("{{ " + lit + " }}").render() == text
    assert _env().from_string("{%- set x = [{'c': " + lit + "}] %}{{ x[0]['c'] }}").render() == text


def test_literal_uses_only_escapes_llama_cpp_knows():
    # llama.cpp's C++ Jinja lexer knows \n \t \r \b \f \v \\ \' \" and nothing else (no \u, \x).
    lit = jinja_string_literal("".join(NASTY))
    escapes = set(re.findall(r"\\(.)", lit))
    assert escapes <= set("ntr\\'")


def test_nul_is_refused():
    with pytest.raises(ValueError):
        jinja_string_literal("a\x00b")


CONVERSATIONS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes?"}, {"role": "user", "content": "who?"}],
    [{"role": "assistant", "content": "greeting first"}, {"role": "user", "content": "ok"}],
]

# templates that start with whitespace exercise trim_blocks / lstrip_blocks at the seam
EDGE_TEMPLATES = [
    CHATML_TEMPLATE,
    "\n" + CHATML_TEMPLATE,
    "  {% for m in messages %}[{{ m['role'] }}|{{ m['content'] }}]\n{% endfor %}",
    "\n\n  {%- for m in messages %}{{ m['role'] }}:{{ m['content'] }};{% endfor %}",
    "{{ bos_token }}{% for m in messages %}{{ m.role }}={{ m.content }}{% endfor %}",
]


@pytest.mark.parametrize("template", [None, *EDGE_TEMPLATES])
@pytest.mark.parametrize("text", [SYSTEM_PROMPT, NASTY[3], NASTY[5], NASTY[8]])
def test_bake_matches_base_template(template, text):
    template = template or base_spec().chat_template  # None: the real SmolLM2 template
    baked = bake_chat_template(template, text)
    special = {"bos_token": "<s>", "eos_token": "</s>"}
    for messages, gen in itertools.product(CONVERSATIONS, (True, False)):
        # no system message: exactly the base template with the persona as system message
        expected = render_chat_template(template, [{"role": "system", "content": text}] + messages, gen, **special)
        assert render_chat_template(baked, messages, gen, **special) == expected
        # a system message of the caller's own: exactly the base template
        own = [{"role": "system", "content": "Be a pirate."}] + messages
        assert render_chat_template(baked, own, gen, **special) == render_chat_template(template, own, gen, **special)


def test_bake_replaces_base_default_system_prompt():
    template = base_spec().chat_template
    assert "SmolLM" in render_chat_template(template, CONVERSATIONS[0], True)
    out = render_chat_template(bake_chat_template(template, SYSTEM_PROMPT), CONVERSATIONS[0], True)
    assert "SmolLM" not in out
    assert out.startswith("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\nhello")


@pytest.mark.parametrize("text", [SYSTEM_PROMPT, NASTY[3], NASTY[8]])
def test_bake_in_llama_cpp_python_formatter(text):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = base_spec().chat_template
    fmt = Jinja2ChatFormatter(bake_chat_template(template, text), eos_token="<|im_end|>", bos_token="<|im_start|>")
    for messages in CONVERSATIONS:
        expected = render_chat_template(template, [{"role": "system", "content": text}] + messages, True)
        assert fmt(messages=messages).prompt == expected


def test_baked_gguf_in_plain_llama_cpp(tmp_path_factory):
    """A plain llama-cpp-python user, no system message: the persona is in the prompt llama.cpp evaluates."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    path = build_npc(tmp_path_factory.mktemp("npc"))
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=1, verbose=False)
    try:
        template = llm.metadata["tokenizer.chat_template"]
        assert template == bake_chat_template(base_spec().chat_template, SYSTEM_PROMPT)
        assert llm.chat_format == "chat_template.default"  # llama-cpp-python uses the file's template
        messages = [{"role": "user", "content": "Who are you?"}]
        prompt = Jinja2ChatFormatter(template, "<|im_end|>", "<|im_start|>")(messages=messages).prompt
        assert prompt.startswith("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n")
        expected_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        out = llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0.0)
        assert out["usage"]["prompt_tokens"] == len(expected_ids)
        # the evaluated tokens are the persona prompt's tokens
        assert list(llm._input_ids[: len(expected_ids)]) == expected_ids
        system_ids = llm.tokenize(SYSTEM_PROMPT.encode("utf-8"), add_bos=False, special=False)
        assert expected_ids[3 : 3 + len(system_ids)] == system_ids
    finally:
        llm.close()


def test_chat_formats():
    assert chat_format_of(base_spec().chat_template) == "chatml"
    assert chat_format_of(None) == "chatml"  # no template: baking uses plain ChatML
    assert chat_format_of(LLAMA3_TEMPLATE) == "llama3"
    assert chat_format_of(UNKNOWN_TEMPLATE) is None


@pytest.mark.parametrize("base, expected", [(LLAMA3_TEMPLATE, "llama3"), (UNKNOWN_TEMPLATE, None)],
                         ids=["llama3", "unknown"])
def test_chat_format_is_the_base_templates_not_the_personas(base, expected):
    """Defect 8: the baked template holds the persona text; read it and a ChatML-talking persona makes
    any base look like ChatML. The base template, before baking, says what the format is."""
    baked = bake_chat_template(base, CHATML_TALKING_PERSONA)
    assert chat_format_of(baked) == "chatml"  # what detection on the baked template (the old way) said
    assert chat_format_of(base) == expected
