"""Tests for ppgguf.inputs.persona: text personas, JSON cards (V1/V2/V3) and bad inputs (PNG cards: test_card_png.py)."""

from __future__ import annotations

import json

import pytest

from card_fixtures import DESC, V1_CARD, load_error, v2_card, v3_card, write
from ppgguf.errors import UserError
from ppgguf.inputs.persona import (
    MAX_PERSONA_BYTES,
    Persona,
    build_system_prompt,
    default_frame,
    load_persona,
    persona_from_card,
    persona_from_text,
)

# ---------------------------------------------------------------------------------------------
# plain text


def test_text_name_line(tmp_path):
    p = write(tmp_path, "whatever.txt", f"name:  Mara Voss  \n\n{DESC}\nShe hums old shanties.\n")
    per = load_persona(p)
    assert per.name == "Mara Voss"
    assert per.description == f"{DESC}\nShe hums old shanties."
    assert "name:" not in per.description.lower()
    assert per.source_kind == "text" and per.greeting is None and per.card is None
    assert per.system_prompt == f"{default_frame('Mara Voss')}\n\n{per.description}"
    assert per.system_prompt.startswith("You are Mara Voss.")


def test_text_name_line_not_first(tmp_path):
    p = write(tmp_path, "x.txt", f"# Character sheet\nName: Mara\n{DESC}")
    per = load_persona(p)
    assert per.name == "Mara"
    assert per.description == f"# Character sheet\n{DESC}"


def test_text_first_line_name(tmp_path):
    p = write(tmp_path, "x.txt", f"Captain Mara\n{DESC}")
    per = load_persona(p)
    assert per.name == "Captain Mara"
    assert per.description == DESC


def test_text_markdown_heading_name(tmp_path):
    per = load_persona(write(tmp_path, "x.md", f"# Mara\n\n{DESC}"))
    assert per.name == "Mara" and per.description == DESC


def test_text_stem_fallback(tmp_path):
    # first line is a sentence (ends with a period): not a name
    p = write(tmp_path, "captain_mara-voss.txt", f"{DESC}\nShe hums old shanties.")
    per = load_persona(p)
    assert per.name == "Captain Mara Voss"
    assert per.description.startswith(DESC)


def test_text_single_line_uses_stem(tmp_path):
    per = load_persona(write(tmp_path, "old-salt", "A weathered sea captain with a wooden leg"))
    assert per.name == "Old Salt"
    assert per.description == "A weathered sea captain with a wooden leg"


def test_text_newlines_and_trailing_whitespace(tmp_path):
    p = write(tmp_path, "x.txt", b"\xef\xbb\xbfName: Mara\r\n\r\n  Line one of the sheet.   \r\nLine two of it.\t\r\n\r\n")
    per = load_persona(p)
    assert per.name == "Mara"
    assert per.description == "  Line one of the sheet.\nLine two of it."
    assert "\r" not in per.system_prompt


def test_text_keeps_unicode_and_template_syntax(tmp_path):
    body = (
        "Zoë «the Ωmega» 日本語 🙂 says \"hi\" and 'bye'.\n"
        "{{char}} and {{user}} stay literal; so do {% if x %}{{ x }}{% endif %} and <BOT> \\n \\\\."
    )
    per = load_persona(write(tmp_path, "zoë.txt", "Name: Zoë {{x}}\n" + body))
    assert per.name == "Zoë {{x}}"
    assert per.description == body
    assert per.system_prompt.endswith(body)
    json.dumps(per.to_json(), ensure_ascii=False)


def test_persona_from_text_direct():
    per = persona_from_text(DESC, fallback_name="Mara")
    assert per.name == "Mara" and per.description == DESC


def test_persona_is_frozen_and_hashable():
    per = persona_from_card(v2_card())
    with pytest.raises(AttributeError):
        per.name = "x"  # type: ignore[misc]
    hash(per)


# ---------------------------------------------------------------------------------------------
# JSON cards


def test_card_v1_json(tmp_path):
    per = load_persona(write(tmp_path, "mara.json", json.dumps(V1_CARD)))
    assert per.source_kind == "card-v1"
    assert per.name == "Mara"
    assert per.description == "Mara is a weathered sea captain. She calls User 'landlubber'."
    assert per.greeting == "Welcome aboard, User."
    sp = per.system_prompt
    assert sp.startswith(default_frame("Mara") + "\n\n" + per.description)
    assert "Mara's personality: gruff, loyal, superstitious" in sp
    assert "Scenario: User has just boarded Mara's ship." in sp
    assert sp.endswith(
        "Example dialogue:\nUser: Who are you?\nMara: Captain of this ship.\n\nUser: Where to?\nMara: North."
    )
    assert "<START>" not in sp and "{{" not in sp
    assert per.card == V1_CARD  # original, unexpanded data kept for metadata


def test_card_v2_json(tmp_path):
    per = load_persona(write(tmp_path, "mara.json", json.dumps(v2_card())))
    assert per.source_kind == "card-v2"
    assert per.description == "Mara is a weathered sea captain who distrusts the navy."
    assert per.greeting == "Ahoy, User!"
    assert per.system_prompt.startswith(default_frame("Mara") + " Never reveal the treasure map.\n\n")
    assert "Scenario:" not in per.system_prompt  # empty fields are skipped
    assert per.card is not None and per.card["tags"] == ["pirate"]
    out = json.loads(json.dumps(per.to_json()))
    assert out["source_kind"] == "card-v2" and out["card"]["name"] == "Mara"


def test_card_v3_json(tmp_path):
    card = v3_card(system_prompt="", first_mes="")
    per = load_persona(write(tmp_path, "mara.json", json.dumps(card, ensure_ascii=False)))
    assert per.source_kind == "card-v3"
    assert per.greeting is None
    assert per.system_prompt.startswith(default_frame("Mara") + "\n\nMara is a weathered")
    assert "group_only_greetings" in per.card


def test_card_system_prompt_without_original_replaces_frame():
    per = persona_from_card(v2_card(system_prompt="You play {{char}} in a gritty story."))
    assert per.system_prompt.startswith("You play Mara in a gritty story.\n\nMara is")
    assert default_frame("Mara") not in per.system_prompt


def test_build_system_prompt_order_and_literal_values():
    sp = build_system_prompt(
        "A\\1 {x}", "desc {{y}}", personality="p", scenario="s", examples="<start>\nA: hi", card_system_prompt="{{ORIGINAL}}!"
    )
    frame = default_frame("A\\1 {x}")
    assert sp == f"{frame}!\n\ndesc {{{{y}}}}\n\nA\\1 {{x}}'s personality: p\n\nScenario: s\n\nExample dialogue:\nA: hi"
    assert build_system_prompt("M", "d") == default_frame("M") + "\n\nd"


# ---------------------------------------------------------------------------------------------
# bad inputs


def _bad(name, content):
    return lambda tmp: write(tmp, name, content)


def _dir(tmp):
    (tmp / "chars").mkdir()
    return tmp / "chars"


def _huge_card(tmp):
    return write(tmp, "big.json", json.dumps(v2_card(description="x" * (MAX_PERSONA_BYTES + 10))))


BAD_INPUTS = [
    ("missing", lambda tmp: tmp / "nope.txt", "not found"),
    ("directory", _dir, "is a directory"),
    ("empty", _bad("e.txt", ""), "empty"),
    ("whitespace", _bad("w.txt", " \n\t\r\n "), "empty"),
    ("empty-json", _bad("e.json", "  \n"), "empty"),
    ("binary", _bad("b.txt", b"Name: X\0\1\2 some binary junk here"), "binary"),
    ("utf16", _bad("u.txt", "Name: Mara\nA sea captain.".encode("utf-16")), "UTF-8"),
    ("non-utf8", _bad("l.txt", "Name: Zoë\nA weathered sea captain.".encode("latin-1")), "save it as UTF-8"),
    ("too-big", _bad("big.txt", "Name: Mara\n" + "a" * (64 * 1024)), "64 KiB"),
    ("short-description", _bad("s.txt", "Name: Mara\nA pirate."), "at least 20"),
    ("malformed-json", _bad("c.json", '{\n  "name": "Mara"\n  "description": "x"\n}'), "line 3, column 3"),
    ("json-not-object", _bad("c.json", "[1, 2]"), "must be a JSON object"),
    ("missing-name", _bad("c.json", json.dumps({"description": DESC})), "field 'name' is missing or empty"),
    ("empty-name", _bad("c.json", json.dumps(v2_card(name="  "))), "field 'data.name' is missing or empty"),
    ("missing-description", _bad("c.json", json.dumps(v2_card(description=None))), "field 'data.description' is missing"),
    ("wrong-type-name", _bad("c.json", json.dumps(v2_card(name=42))), "field 'data.name' must be a string, got a number"),
    ("wrong-type-optional", _bad("c.json", json.dumps(v3_card(scenario=["x"]))), "field 'data.scenario' must be a string"),
    ("data-not-object", _bad("c.json", json.dumps({"spec": "chara_card_v2", "data": "x"})), "field 'data' must be an object"),
    ("unknown-spec", _bad("c.json", json.dumps({**v2_card(), "spec": "chara_card_v9"})), "unknown card spec 'chara_card_v9'"),
    ("card-prompt-too-big", _huge_card, "64 KiB limit"),
]


@pytest.mark.parametrize("make, expected", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(tmp_path, make, expected):
    message = load_error(make(tmp_path))
    assert expected.lower() in message.lower(), message


def test_bad_text_direct_calls():
    with pytest.raises(UserError, match="empty"):
        persona_from_text("   \n ")
    with pytest.raises(UserError, match="64 KiB"):
        persona_from_text("x" * (MAX_PERSONA_BYTES + 1))
    with pytest.raises(UserError, match="must be a JSON object"):
        persona_from_card("not a dict")  # type: ignore[arg-type]


def test_persona_type():
    assert isinstance(persona_from_card(V1_CARD), Persona)
