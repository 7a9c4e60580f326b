"""Load the one character a pruned model is built for.

A persona comes from one file:

* a plain-text file (``.txt`` or any suffix other than ``.json``/``.png``): an optional name line,
  then a free-form description;
* a Character Card as JSON (``.json``): V1 (flat object), V2 (``spec: chara_card_v2``) or
  V3 (``spec: chara_card_v3``);
* a Character Card embedded in a PNG (``.png``): a ``tEXt``/``zTXt``/``iTXt`` chunk with keyword
  ``chara`` (base64 JSON, V1/V2) or ``ccv3`` (base64 JSON, V3); ``ccv3`` wins when both exist
  (read by `ppgguf.card_png`).

Whatever the source, the result is a `Persona` whose ``system_prompt`` is the exact text the model is
calibrated with and that is baked into the GGUF chat template. Persona text is data everywhere: braces,
Jinja-looking text, quotes and non-ASCII characters are kept as they are. Only card fields get the
SillyTavern macros (``{{char}}``, ``{{user}}``, ``<BOT>``, ``<USER>``) replaced; plain-text files are
never macro-expanded.

Plain-text name rules (first match wins):

1. a ``Name: X`` line among the first 5 lines (case-insensitive); that line is removed;
2. the first line, if it is short (at most 60 characters) and does not end like a sentence;
3. the file name, e.g. ``captain_mara-voss.txt`` -> ``Captain Mara Voss``.

Every bad input raises `UserError` with a one-line message naming the problem and the fix.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ppgguf.card_png import PNG_SIGNATURE, png_card_text
from ppgguf.errors import UserError

__all__ = ["MAX_PERSONA_BYTES", "MIN_DESCRIPTION_CHARS", "Persona", "build_system_prompt", "default_frame",
           "load_persona", "persona_from_card", "persona_from_text"]

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

MAX_PERSONA_BYTES = 64 * 1024  # plain-text file size, and the size of the built system prompt
MIN_DESCRIPTION_CHARS = 20
MAX_JSON_CARD_BYTES = 16 * 1024 * 1024  # JSON cards may carry lorebooks / embedded assets
MAX_NAME_LINE_CHARS = 60
USER_NAME = "User"

_SPEC_KINDS = {"chara_card_v2": "card-v2", "chara_card_v3": "card-v3"}
_TEXT_FIELDS = ("personality", "scenario", "first_mes", "mes_example", "system_prompt")

_NAME_LINE = re.compile(r"^\s*name\s*:\s*(.*?)\s*$", re.IGNORECASE)
_CHAR_MACRO = re.compile(r"\{\{\s*char\s*\}\}|<bot>", re.IGNORECASE)
_USER_MACRO = re.compile(r"\{\{\s*user\s*\}\}|<user>", re.IGNORECASE)
_ORIGINAL_MACRO = re.compile(r"\{\{\s*original\s*\}\}", re.IGNORECASE)
_START_LINE = re.compile(r"^[ \t]*<start>[ \t]*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Persona:
    """One character, ready for calibration prompts and GGUF metadata."""

    name: str
    description: str  # the character text used for prompts / metadata
    system_prompt: str  # exact system prompt used for calibration and baked into the GGUF
    greeting: str | None  # a card's first_mes, else None
    source_kind: str  # "text" | "card-v1" | "card-v2" | "card-v3"
    card: dict | None = field(default=None, hash=False)  # card data dict (V2/V3 'data', V1 flat)

    def to_json(self) -> dict:
        """A plain, `json.dumps`-able dict (for reports); the card is a copy."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# system prompt


def default_frame(name: str) -> str:
    """The fixed role-play frame that opens every system prompt (and is ``{{original}}`` in cards)."""
    return (
        f"You are {name}. Stay in character as {name} for the whole conversation: "
        f"speak in {name}'s voice, never mention being an AI, and never break character."
    )


def _clean_examples(examples: str) -> str:
    blocks = [_normalize(b) for b in _START_LINE.split(examples)]
    return "\n\n".join(b for b in blocks if b)


def build_system_prompt(name: str, description: str, personality: str = "", scenario: str = "", examples: str = "",
                        card_system_prompt: str = "") -> str:
    """Assemble the system prompt.

    Order: the card's own system prompt (``{{original}}`` -> default frame) or else the default frame;
    the description; ``"{name}'s personality: ..."``; ``"Scenario: ..."``; ``"Example dialogue:"``
    with ``<START>`` separator lines removed. Empty parts are skipped; parts are joined by a blank line.
    All texts are inserted verbatim (no templating of their contents).
    """
    frame = default_frame(name)
    if card_system_prompt and card_system_prompt.strip():
        # a function replacement, so backslashes etc. in the frame are never interpreted
        head = _ORIGINAL_MACRO.sub(lambda _m: frame, card_system_prompt.strip())
    else:
        head = frame
    parts = [head]
    if description and description.strip():
        parts.append(description.strip())
    if personality and personality.strip():
        parts.append(f"{name}'s personality: {personality.strip()}")
    if scenario and scenario.strip():
        parts.append(f"Scenario: {scenario.strip()}")
    if examples and examples.strip():
        cleaned = _clean_examples(examples)
        if cleaned:
            parts.append(f"Example dialogue:\n{cleaned}")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------
# plain text


def _normalize(text: str) -> str:
    """Unify newlines, drop trailing whitespace on every line and blank lines at both ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


def _name_from_stem(stem: str) -> str:
    words = re.sub(r"[_\-]+", " ", stem).split()
    name = " ".join(w[:1].upper() + w[1:] for w in words)
    return name or "Character"


def _looks_like_name(line: str) -> bool:
    line = line.strip()
    return 0 < len(line) <= MAX_NAME_LINE_CHARS and not line.endswith((".", "!", "?", ":", ";", ","))


def persona_from_text(text: str, fallback_name: str = "Character", *, source: str = "persona text") -> Persona:
    """Parse a plain-text persona (see the module docstring for the name rules).

    ``source`` is only used to prefix error messages (the loader passes the file name).
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PERSONA_BYTES:
        raise UserError(f"{source}: the character text is over the {MAX_PERSONA_BYTES // 1024} KiB limit; "
                        "shorten it to the essentials (a few paragraphs are enough)")
    body = _normalize(text)
    if not body.strip():
        raise UserError(f"{source}: the character text is empty; write the character's name and description in it")
    lines = body.split("\n")

    name = None
    for i, line in enumerate(lines[:5]):
        m = _NAME_LINE.match(line)
        if m and m.group(1):
            name = m.group(1)
            del lines[i]
            break
    if name is None and len(lines) > 1 and _looks_like_name(lines[0]):
        name = lines[0].strip()
        if name.startswith("#"):  # a Markdown heading: "# Mara"
            name = name.lstrip("#").strip() or name
        del lines[0]
    if name is None:
        name = fallback_name.strip() or "Character"

    description = "\n".join(lines).strip("\n")
    if len(description.strip()) < MIN_DESCRIPTION_CHARS:
        raise UserError(f"{source}: the character description is only {len(description.strip())} characters after "
                        f"the name (need at least {MIN_DESCRIPTION_CHARS}); write a few sentences about who "
                        f"{name} is and how they talk")
    return Persona(name=name, description=description, system_prompt=build_system_prompt(name, description),
                   greeting=None, source_kind="text", card=None)


# --------------------------------------------------------------------------------------------
# cards


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


def persona_from_card(card: dict, *, source: str = "card") -> Persona:
    """Build a persona from a parsed Character Card (V1 flat, V2 or V3 wrapped).

    ``source`` is only used to prefix error messages (the loader passes the file name).
    """
    data, kind, prefix = _unwrap_card(card, source)
    name = _normalize(_required_str(data, "name", prefix, source)).strip()
    description = _required_str(data, "description", prefix, source)
    fields = {key: _optional_str(data, key, prefix, source) for key in _TEXT_FIELDS}

    description = _normalize(_expand_macros(description, name))
    fields = {k: _normalize(_expand_macros(v, name)) for k, v in fields.items()}
    if not description.strip():
        raise UserError(
            f"{source}: field '{prefix}description' is missing or empty; fill in the character's description"
        )

    system_prompt = build_system_prompt(name, description, personality=fields["personality"], scenario=fields["scenario"],
                                        examples=fields["mes_example"], card_system_prompt=fields["system_prompt"])
    size = len(system_prompt.encode("utf-8", "surrogatepass"))
    if size > MAX_PERSONA_BYTES:
        raise UserError(
            f"{source}: the card's character text is {size // 1024} KiB, over the "
            f"{MAX_PERSONA_BYTES // 1024} KiB limit; shorten description, personality, scenario or mes_example"
        )
    return Persona(name=name, description=description, system_prompt=system_prompt,
                   greeting=fields["first_mes"] or None, source_kind=kind, card=copy.deepcopy(data))


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{source}: malformed JSON at line {e.lineno}, column {e.colno} ({e.msg}); "
                        "fix the file or export the card again") from None
    except RecursionError:
        raise UserError(f"{source}: JSON is nested too deeply; export the card again") from None


# --------------------------------------------------------------------------------------------
# loading from a file


def _decode_utf8(blob: bytes, source: str) -> str:
    if b"\0" in blob:
        raise UserError(f"{source}: looks binary (contains NUL bytes; UTF-16 files do too); "
                        "give a plain-text file saved as UTF-8, a .json card or a .png card")
    try:
        return blob.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{source}: is not valid UTF-8 text (bad byte at offset {e.start}); save it as UTF-8") from None


def load_persona(path: str | Path) -> Persona:
    """Load a persona from a text file, a JSON card or a PNG card (chosen by content, then suffix)."""
    p = Path(path)
    source = p.name or str(p)
    if not p.exists():
        raise UserError(f"{p}: character file not found; check the path")
    if p.is_dir():
        raise UserError(f"{p}: is a directory; give the character file itself (.txt, .json or .png)")
    suffix = p.suffix.lower()
    size = p.stat().st_size
    with open(p, "rb") as f:
        is_png = f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE

    if is_png or suffix == ".png":
        text, where = png_card_text(p, source)
        return persona_from_card(_parse_json(text, where), source=where)

    limit = MAX_JSON_CARD_BYTES if suffix == ".json" else MAX_PERSONA_BYTES
    if size > limit:
        what = "card" if suffix == ".json" else "character file"
        raise UserError(f"{source}: the {what} is {size // 1024} KiB, over the {limit // 1024} KiB limit; "
                        "shorten it to the essentials")
    text = _decode_utf8(p.read_bytes(), source)
    if not text.strip():
        raise UserError(f"{source}: the file is empty; write the character's name and description in it")
    if suffix == ".json":
        return persona_from_card(_parse_json(text, source), source=source)
    return persona_from_text(text, fallback_name=_name_from_stem(p.stem), source=source)


def reference_personas(count: int | None = None) -> list[Persona]:
    """The varied characters shipped in ppgguf/data: what persona divergence and attribution compare against."""
    data = json.loads((resources.files("ppgguf") / "data" / "reference_personas.json").read_text(encoding="utf-8"))
    return [persona_from_card({"name": p["name"], "description": p["description"]}) for p in data[:count]]
