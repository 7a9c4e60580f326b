"""The Ollama Modelfile (read back with a port of Ollama's parser) and the sampling keys it repeats."""

from __future__ import annotations

import ast
import itertools
import re

import gguf
import pytest

from ppgguf.build.model_card import model_card_text
from ppgguf.build.modelfile import GO_FORMATS, modelfile_name, modelfile_params, modelfile_text, triple_quote_safe
from ppgguf.export.chat_template import chat_format_of
from ppgguf.llama.keys import PPGGUF
from ppgguf.llama.reader import read_header
from ppgguf.llama.sampling import DEFAULT_SAMPLING, sampling_from_metadata, sampling_metadata

from modelfile_parser import modelfile_fields, parse_modelfile
from npc_fixture import GREETING, SYSTEM_PROMPT, base_spec, build_npc
from test_chat_template import CHATML_TALKING_PERSONA, LLAMA3_TEMPLATE, NASTY, UNKNOWN_TEMPLATE
from test_model_card import REPORT

CHATML_GO_TEMPLATE = GO_FORMATS["chatml"]["template"]
PARAMS = {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1, "num_ctx": 2048}


def _template_literal(template: str) -> str:
    """The system prompt a fallback TEMPLATE carries as a Go string literal."""
    literal = re.search(r'\{\{ ("(?:[^"\\]|\\.)*") \}\}', template).group(1)
    assert all(c.isprintable() for c in literal)
    return ast.literal_eval(literal)  # Go's escapes used here are a subset of Python's


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
    meta = read_header(build_npc(tmp_path_factory.mktemp("npc"))).values()
    assert sampling_from_metadata(meta) == DEFAULT_SAMPLING
    assert meta[PPGGUF.SYSTEM_PROMPT] == SYSTEM_PROMPT


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


@pytest.mark.parametrize("text", ["You are Mirela.\nStay in voice.", NASTY[3], NASTY[5], NASTY[8], SYSTEM_PROMPT,
                                  '"""', 'ends with quotes"""', '"starts with a quote'])
def test_modelfile_round_trips_system_prompt(text):
    raw = modelfile_text("chatml", "npc.gguf", text, PARAMS)
    assert raw.startswith("# Ollama Modelfile written by ppgguf. Use: ollama create NAME -f npc.Modelfile\n")
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
        assert ".Messages" in fields["template"]
        assert _template_literal(fields["template"]) == text


def test_modelfile_fallback_is_needed_for_the_fixture_prompt():
    # the fixture prompt has '\"\"\"' before a line break: SYSTEM \"\"\"...\"\"\" would cut it short
    assert not triple_quote_safe(SYSTEM_PROMPT)
    try:  # Ollama either refuses the file or reads a shorter prompt
        got = modelfile_fields(f'FROM x\nSYSTEM """{SYSTEM_PROMPT}"""\n').get("system")
    except ValueError:
        got = None
    assert got != SYSTEM_PROMPT


def test_modelfile_formats():
    fields = modelfile_fields(modelfile_text("llama3", "npc.gguf", "You are Mirela.", PARAMS))
    assert fields["template"] == GO_FORMATS["llama3"]["template"]
    assert "<|eot_id|>" in fields["parameters"]["stop"]
    for unknown in (None, "mistral"):
        with pytest.raises(ValueError, match="unknown chat format"):
            modelfile_text(unknown, "npc.gguf", "You are Mirela.", PARAMS)


@pytest.mark.parametrize("base", [LLAMA3_TEMPLATE, UNKNOWN_TEMPLATE], ids=["llama3", "unknown"])
def test_modelfile_format_follows_the_base_template(base):
    """Defect 8: a ChatML-talking persona on a Llama 3 base gets Llama 3's TEMPLATE; on an unknown base,
    none (the old detection, on the baked template, wrote a ChatML TEMPLATE for both)."""
    chat_format = chat_format_of(base)
    if chat_format is None:
        with pytest.raises(ValueError, match="unknown chat format"):
            modelfile_text(chat_format, "npc.gguf", CHATML_TALKING_PERSONA, PARAMS)
        return
    fields = modelfile_fields(modelfile_text(chat_format, "npc.gguf", CHATML_TALKING_PERSONA, PARAMS))
    assert fields["template"] == GO_FORMATS["llama3"]["template"]
    assert fields["system"] == CHATML_TALKING_PERSONA


def test_companions_from_the_gguf_metadata(tmp_path_factory):
    """The Modelfile built from a GGUF's own metadata, as the build writes it beside the file."""
    path = build_npc(tmp_path_factory.mktemp("npc"))
    meta = read_header(path).values()
    params = modelfile_params(meta)
    assert list(params) == [*DEFAULT_SAMPLING, "num_ctx"]
    assert params["num_ctx"] == 2048  # the fixture's context length, under the 4096 cap
    assert modelfile_name(path.name) == "npc.Modelfile"
    chat_format = chat_format_of(base_spec().chat_template)
    fields = modelfile_fields(modelfile_text(chat_format, path.name, meta[PPGGUF.SYSTEM_PROMPT], params))
    assert fields["from"] == "./npc.gguf"
    assert float(fields["parameters"]["temperature"][0]) == DEFAULT_SAMPLING["temperature"]
    assert fields["parameters"]["num_ctx"] == ["2048"]
    assert _template_literal(fields["template"]) == SYSTEM_PROMPT
    assert "ppgguf chat npc.gguf" in model_card_text({**REPORT, "output": str(path)})
    # an easy prompt goes in SYSTEM
    easy = build_npc(tmp_path_factory.mktemp("npc2"), system_prompt="You are Mirela.\nBe terse.", greeting=GREETING)
    meta = read_header(easy).values()
    fields = modelfile_fields(modelfile_text(chat_format, easy.name, meta[PPGGUF.SYSTEM_PROMPT], modelfile_params(meta)))
    assert fields["system"] == "You are Mirela.\nBe terse."


def test_num_ctx_is_capped():
    assert modelfile_params({gguf.Keys.General.ARCHITECTURE: "qwen2", "qwen2.context_length": 32768})["num_ctx"] == 4096
    assert modelfile_params({})["num_ctx"] == 2048  # no context length: llama's default
