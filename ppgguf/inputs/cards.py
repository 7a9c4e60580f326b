"""Character Cards as JSON: V1 (a flat object), V2 (``spec: chara_card_v2``) and V3 (``spec: chara_card_v3``).

`card_fields` checks a parsed card and returns the fields a persona is made of (ppgguf.inputs.persona
builds its system prompt from them), with the SillyTavern macros (``{{char}}``, ``{{user}}``,
``<BOT>``, ``<USER>``) replaced. A PNG card's JSON comes from ppgguf.inputs.card_png. Every bad card
raises `UserError` with a one-line message naming the field and the fix.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from ..errors import UserError

# How each card field is used (README copies this table):
#
#   card field (V1 / V2 data.* / V3 data.*)   used as
#   ---------------------------------------   -------------------------------------------------------
#   name                                      Persona.name; replaces {{char}} / <BOT> (required)
#   description                               system prompt, after the frame (required, non-empty)
#   personality                               system prompt: "{name}'s personality: ..."
#   scenario                                  system prompt: "Scenario: ..."
#   mes_example                               system prompt: "Example dialogue:" block, <START> lines removed
#   system_prompt (V2/V3)                     system prompt head, replacing the default frame;
#                                             {{original}} inside it = the default frame
#   first_mes                                 Persona.greeting
#   post_history_instructions, alternate_greetings, character_book, creator_notes, tags, creator,
#   character_version, extensions, assets, ...  not used for prompts; kept in Persona.card (metadata)
#
# Macros in card text fields: {{char}} / <BOT> -> name, {{user}} / <USER> -> "User" (case-insensitive).

MAX_JSON_CARD_BYTES = 16 * 1024 * 1024  # JSON cards may carry lorebooks / embedded assets
USER_NAME = "User"

_SPEC_KINDS = {"chara_card_v2": "card-v2", "chara_card_v3": "card-v3"}
TEXT_FIELDS = ("personality", "scenario", "first_mes", "mes_example", "system_prompt")

_CHAR_MACRO = re.compile(r"\{\{\s*char\s*\}\}|<bot>", re.IGNORECASE)
_USER_MACRO = re.compile(r"\{\{\s*user\s*\}\}|<user>", re.IGNORECASE)


def normalize_text(text: str) -> str:
    """Unify newlines, drop trailing whitespace on every line and blank lines at both ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


def _expand_macros(text: str, name: str) -> str:
    text = _CHAR_MACRO.sub(lambda _m: name, text)
    return _USER_MACRO.sub(lambda _m: USER_NAME, text)


def _unwrap_card(card: Any, source: str) -> tuple[dict, str, str]:
    """Return (data dict, source_kind, field prefix for messages)."""
    if not isinstance(card, dict):
        raise UserError(f"{source}: a character card must be a JSON object, got {_json_type(card)}; "
                        "export the card again as a Character Card V1/V2/V3")
    spec = card.get("spec")
    if spec is None:
        data = card.get("data")
        if isinstance(data, dict) and "name" not in card and "name" in data:
            return data, "card-v2", "data."  # a V2-shaped card that lost its 'spec'
        return card, "card-v1", ""
    if not isinstance(spec, str):
        raise UserError(f"{source}: field 'spec' must be a string, got {_json_type(spec)}; "
                        "use \"chara_card_v2\" or \"chara_card_v3\" (or drop it for a V1 card)")
    kind = _SPEC_KINDS.get(spec.strip())
    if kind is None:
        raise UserError(f"{source}: unknown card spec {spec!r}; supported are \"chara_card_v2\", "
                        "\"chara_card_v3\" and V1 cards without 'spec'")
    data = card.get("data")
    if data is None:
        raise UserError(f"{source}: field 'data' is missing; a {spec} card keeps its fields in a 'data' object")
    if not isinstance(data, dict):
        raise UserError(f"{source}: field 'data' must be an object, got {_json_type(data)}; export the card again")
    return data, kind, "data."


_JSON_TYPES = ((type(None), "null"), (bool, "a boolean"), ((int, float), "a number"), (str, "a string"),
               (list, "an array"), (dict, "an object"))  # bool before int: a bool is an int


def _json_type(value: Any) -> str:
    return next((name for types, name in _JSON_TYPES if isinstance(value, types)), type(value).__name__)


def _required_str(data: dict, key: str, prefix: str, source: str) -> str:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{source}: field '{prefix}{key}' must be a string, got {_json_type(value)}; fix the card")
    if value is None or not value.strip():
        raise UserError(
            f"{source}: field '{prefix}{key}' is missing or empty; fill in the character's {key} in the card"
        )
    return value


def _optional_str(data: dict, key: str, prefix: str, source: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{source}: field '{prefix}{key}' must be a string, got {_json_type(value)}; "
                        "fix the card or remove the field")
    return value


class CardFields(NamedTuple):
    name: str
    description: str
    texts: dict[str, str]  # the optional text fields (TEXT_FIELDS), "" where absent
    kind: str  # "card-v1" | "card-v2" | "card-v3"
    data: dict  # the card's data object (V2/V3 'data', V1 flat), as given


def card_fields(card: Any, source: str) -> CardFields:
    """The fields of a parsed Character Card (V1 flat, V2 or V3 wrapped): checked, macros expanded, normalised.

    ``source`` is only used to prefix error messages.
    """
    data, kind, prefix = _unwrap_card(card, source)
    name = normalize_text(_required_str(data, "name", prefix, source)).strip()
    description = _required_str(data, "description", prefix, source)
    fields = {key: _optional_str(data, key, prefix, source) for key in TEXT_FIELDS}

    description = normalize_text(_expand_macros(description, name))
    fields = {k: normalize_text(_expand_macros(v, name)) for k, v in fields.items()}
    if not description.strip():
        raise UserError(
            f"{source}: field '{prefix}description' is missing or empty; fill in the character's description"
        )
    return CardFields(name, description, fields, kind, data)


def parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{source}: malformed JSON at line {e.lineno}, column {e.colno} ({e.msg}); "
                        "fix the file or export the card again") from None
    except RecursionError:
        raise UserError(f"{source}: JSON is nested too deeply; export the card again") from None
