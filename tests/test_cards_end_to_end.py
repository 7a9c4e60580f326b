"""A V2 PNG card, a V3 JSON card and a plain text file each build a GGUF that carries the persona:
in its metadata, in `ppgguf chat`, and in the chat template that plain llama-cpp-python renders
when a conversation has no system message."""

from __future__ import annotations

import json

import gguf
import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from typer.testing import CliRunner

from ppgguf.cli import app
from card_fixtures import b64_json as _b64, make_png, text_chunk
from test_reliability import MAGNITUDE_RECIPE

CARD = {
    "name": "Sera Quill",
    "description": "{{char}} is a lighthouse keeper on a stormy northern island who talks in sea metaphors.",
    "personality": "patient, dry humour",
    "scenario": "{{user}} knocks on the lighthouse door during a gale.",
    "first_mes": "Come in out of the rain, {{user}}. The kettle is on.",
    "mes_example": "<START>\n{{user}}: Is it safe?\n{{char}}: Safe as a harbour at low tide.",
}


def _v2_png(tmp_path):
    path = tmp_path / "sera.png"
    path.write_bytes(make_png(text_chunk("chara", _b64({"spec": "chara_card_v2", "spec_version": "2.0", "data": CARD}))))
    return path


def _v3_json(tmp_path):
    path = tmp_path / "sera.json"
    path.write_text(json.dumps({"spec": "chara_card_v3", "spec_version": "3.0", "data": CARD}), encoding="utf-8")
    return path


def _text(tmp_path):
    path = tmp_path / "sera.txt"
    path.write_text("Name: Sera Quill\nSera is a lighthouse keeper on a stormy northern island who talks in sea metaphors.\n",
                    encoding="utf-8")
    return path


@pytest.mark.parametrize("make_character, greeting", [
    (_v2_png, "Come in out of the rain, User. The kettle is on."),
    (_v3_json, "Come in out of the rain, User. The kettle is on."),
    (_text, None),
])
def test_character_file_builds_a_gguf_with_the_persona(make_character, greeting, tiny_llama, tmp_path):
    character = make_character(tmp_path)
    recipe = tmp_path / "magnitude.toml"
    recipe.write_text(MAGNITUDE_RECIPE)
    out = tmp_path / "sera.gguf"
    runner = CliRunner()
    result = runner.invoke(app, ["build", str(character), "--base", str(tiny_llama.dir), "--recipe", str(recipe),
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output

    fields = {k: f.contents() for k, f in gguf.GGUFReader(out).fields.items()
              if k.startswith(("ppgguf.", "tokenizer.chat_template", "general.name"))}
    system_prompt = fields["ppgguf.system_prompt"]
    assert fields["general.name"] == "Sera Quill"
    assert "lighthouse keeper on a stormy northern island" in system_prompt
    assert "{{char}}" not in system_prompt
    assert fields.get("ppgguf.persona.greeting") == greeting

    # Plain llama-cpp-python, no system message: the file's own template supplies the persona.
    formatter = Jinja2ChatFormatter(template=fields["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="")
    prompt = formatter(messages=[{"role": "user", "content": "Who are you?"}]).prompt
    assert prompt.startswith("<|im_start|>system\n" + system_prompt + "<|im_end|>")

    # ppgguf chat opens with the greeting (cards) and answers, then reports stats.
    chat = runner.invoke(app, ["chat", str(out), "--max-tokens", "8"], input="Hello there\n/stats\n/quit\n")
    assert chat.exit_code == 0, chat.output
    if greeting:
        assert greeting in chat.output
    assert "tokens/s" in chat.output and "context" in chat.output
