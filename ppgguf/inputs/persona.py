"""Load the one character a pruned model is built for.

A persona comes from one file:

* a plain-text file (``.txt`` or any suffix other than ``.json``/``.png``): an optional name line,
  then a free-form description;
* a Character Card as JSON (``.json``): V1 (flat object), V2 (``spec: chara_card_v2``) or
  V3 (``spec: chara_card_v3``) (read by `ppgguf.inputs.cards`, which also says how each card field is used);
* a Character Card embedded in a PNG (``.png``): a ``tEXt``/``zTXt``/``iTXt`` chunk with keyword
  ``chara`` (base64 JSON, V1/V2) or ``ccv3`` (base64 JSON, V3); ``ccv3`` wins when both exist
  (read by `ppgguf.inputs.card_png`).

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

from ..errors import UserError
from .card_png import PNG_SIGNATURE, png_card_text
from .cards import MAX_JSON_CARD_BYTES, card_fields, normalize_text, parse_json

__all__ = ["MAX_PERSONA_BYTES", "MIN_DESCRIPTION_CHARS", "Persona", "build_system_prompt", "default_frame",
           "load_persona", "persona_from_card", "persona_from_text"]

MAX_PERSONA_BYTES = 64 * 1024  # plain-text file size, and the size of the built system prompt
MIN_DESCRIPTION_CHARS = 20
MAX_NAME_LINE_CHARS = 60

_NAME_LINE = re.compile(r"^\s*name\s*:\s*(.*?)\s*$", re.IGNORECASE)
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
    blocks = [normalize_text(b) for b in _START_LINE.split(examples)]
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
    body = normalize_text(text)
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


def persona_from_card(card: dict, *, source: str = "card") -> Persona:
    """Build a persona from a parsed Character Card (V1 flat, V2 or V3 wrapped; read by ppgguf.inputs.cards).

    ``source`` is only used to prefix error messages (the loader passes the file name).
    """
    name, description, fields, kind, data = card_fields(card, source)
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
        return persona_from_card(parse_json(text, where), source=where)

    limit = MAX_JSON_CARD_BYTES if suffix == ".json" else MAX_PERSONA_BYTES
    if size > limit:
        what = "card" if suffix == ".json" else "character file"
        raise UserError(f"{source}: the {what} is {size // 1024} KiB, over the {limit // 1024} KiB limit; "
                        "shorten it to the essentials")
    text = _decode_utf8(p.read_bytes(), source)
    if not text.strip():
        raise UserError(f"{source}: the file is empty; write the character's name and description in it")
    if suffix == ".json":
        return persona_from_card(parse_json(text, source), source=source)
    return persona_from_text(text, fallback_name=_name_from_stem(p.stem), source=source)


def reference_personas(count: int | None = None) -> list[Persona]:
    """The varied characters shipped in ppgguf/data: what persona divergence and attribution compare against."""
    data = json.loads((resources.files("ppgguf") / "data" / "reference_personas.json").read_text(encoding="utf-8"))
    return [persona_from_card({"name": p["name"], "description": p["description"]}) for p in data[:count]]
