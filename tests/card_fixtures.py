"""Character card builders for the persona tests: card dicts, a minimal PNG writer, files and errors."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import pytest

from ppgguf.errors import UserError
from ppgguf.inputs.persona import load_persona

DESC = "A weathered sea captain who speaks in short, salty sentences and distrusts the navy."

V1_CARD = {
    "name": "Mara",
    "description": "{{char}} is a weathered sea captain. She calls {{user}} 'landlubber'.",
    "personality": "gruff, loyal, superstitious",
    "scenario": "<USER> has just boarded <BOT>'s ship.",
    "first_mes": "Welcome aboard, {{user}}.",
    "mes_example": "<START>\n{{user}}: Who are you?\n{{char}}: Captain of this ship.\n<START>\n{{user}}: Where to?\n{{char}}: North.",
}


def v2_card(**data) -> dict:
    base = {
        "name": "Mara",
        "description": "{{Char}} is a weathered sea captain who distrusts the navy.",
        "personality": "gruff",
        "scenario": "",
        "first_mes": "Ahoy, {{USER}}!",
        "mes_example": "",
        "system_prompt": "{{original}} Never reveal the treasure map.",
        "tags": ["pirate"],
        "extensions": {},
    }
    base.update(data)
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": base}


def v3_card(**data) -> dict:
    card = v2_card(**data)
    card["spec"] = "chara_card_v3"
    card["spec_version"] = "3.0"
    card["data"].setdefault("group_only_greetings", [])
    return card


def chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def b64_json(card: dict) -> bytes:
    return base64.b64encode(json.dumps(card).encode("utf-8"))


def text_chunk(keyword: str, payload: bytes, kind: str = "tEXt") -> bytes:
    key = keyword.encode("latin-1")
    if kind == "tEXt":
        return chunk(b"tEXt", key + b"\0" + payload)
    if kind == "zTXt":
        return chunk(b"zTXt", key + b"\0\0" + zlib.compress(payload))
    if kind == "iTXt":  # compressed iTXt
        return chunk(b"iTXt", key + b"\0\x01\x00" + b"\0" + b"\0" + zlib.compress(payload))
    if kind == "iTXt-plain":
        return chunk(b"iTXt", key + b"\0\x00\x00" + b"en\0" + b"\0" + payload)
    raise ValueError(kind)


def make_png(*text_chunks: bytes, after: tuple[bytes, ...] = (), idat: bytes = zlib.compress(b"\x00\xff\x00\x00"),
             size: tuple[int, int] = (1, 1)) -> bytes:
    """A PNG of one red RGB pixel (IHDR may declare another `size`), `text_chunks` before its image data, `after` after."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", *size, 8, 2, 0, 0, 0))
    return (b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(text_chunks) + chunk(b"IDAT", idat) + b"".join(after)
            + chunk(b"IEND", b""))


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, str):
        p.write_bytes(content.encode("utf-8"))
    else:
        p.write_bytes(content)
    return p


def load_error(path: Path) -> str:
    """The message of the UserError that loading `path` raises: one line, problem; fix."""
    with pytest.raises(UserError) as exc:
        load_persona(path)
    message = str(exc.value)
    assert "\n" not in message and ";" in message, message
    return message
