"""Tests for ppgguf.inputs.card_png: Character Cards in PNG text chunks, before or after the image data, and bad PNGs."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import PngImagePlugin

from card_fixtures import V1_CARD, b64_json, chunk, load_error, make_png, text_chunk, v2_card, v3_card, write
from ppgguf.inputs.persona import load_persona


@pytest.mark.parametrize("kind", ["tEXt", "zTXt", "iTXt", "iTXt-plain"])
def test_card_v2_png(tmp_path, kind):
    png = make_png(text_chunk("Comment", b"hello"), text_chunk("chara", b64_json(v2_card()), kind))
    per = load_persona(write(tmp_path, "mara.png", png))
    assert per.source_kind == "card-v2"
    assert per.name == "Mara" and per.greeting == "Ahoy, User!"


def test_card_v3_png(tmp_path):
    p = write(tmp_path, "mara.png", make_png(text_chunk("ccv3", b64_json(v3_card(name="Zoë 🙂")))))
    per = load_persona(p)
    assert per.source_kind == "card-v3"
    assert per.name == "Zoë 🙂"
    assert per.description.startswith("Zoë 🙂 is")


def test_png_prefers_ccv3(tmp_path):
    png = make_png(text_chunk("chara", b64_json(v2_card(name="Old"))), text_chunk("ccv3", b64_json(v3_card(name="New"))))
    per = load_persona(write(tmp_path, "card.png", png))
    assert per.name == "New" and per.source_kind == "card-v3"


@pytest.mark.parametrize("kind", ["tEXt", "zTXt", "iTXt", "iTXt-plain"])
def test_card_after_the_image_data(tmp_path, kind):
    # SillyTavern and others insert the card chunk just before IEND
    per = load_persona(write(tmp_path, "mara.png", make_png(after=(text_chunk("chara", b64_json(v2_card()), kind),))))
    assert per.source_kind == "card-v2" and per.name == "Mara"


def test_png_prefers_ccv3_after_the_image_data(tmp_path):
    ccv3 = text_chunk("ccv3", b64_json(v3_card(name="New")), "iTXt")
    png = make_png(text_chunk("chara", b64_json(v2_card(name="Old"))), after=(ccv3,))
    per = load_persona(write(tmp_path, "card.png", png))
    assert per.name == "New" and per.source_kind == "card-v3"


def test_card_before_a_picture_that_does_not_decode(tmp_path):
    png = make_png(text_chunk("chara", b64_json(v2_card())), idat=b"not zlib data")
    assert load_persona(write(tmp_path, "card.png", png)).name == "Mara"


@pytest.mark.parametrize("kind, where", [("zTXt", "before"), ("iTXt", "after")])
def test_card_chunk_over_pillows_default_text_limit(tmp_path, kind, where):
    card = v2_card(character_book={"entries": [{"content": "lore " * 300_000}]})  # a 1.5 MB lorebook
    card_chunk = text_chunk("chara", b64_json(card), kind)
    png = make_png(card_chunk) if where == "before" else make_png(after=(card_chunk,))
    limits = PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY
    with pytest.raises(ValueError, match="MAX_TEXT_CHUNK"):  # what Pillow's default limit does with it
        PngImagePlugin.PngImageFile(io.BytesIO(png)).text
    per = load_persona(write(tmp_path, "big.png", png))
    assert per.card["character_book"] == card["data"]["character_book"]
    assert (PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY) == limits  # restored after the read


def test_png_detected_by_content(tmp_path):
    per = load_persona(write(tmp_path, "card.bin", make_png(text_chunk("chara", b64_json(V1_CARD)))))
    assert per.source_kind == "card-v1"


def _truncated_png(tmp):
    png = make_png(text_chunk("chara", b64_json(v2_card())))
    return write(tmp, "card.png", png[: len(png) // 2])


def _crc_png(tmp):
    png = bytearray(make_png(text_chunk("chara", b64_json(v2_card()))))
    i = png.index(b"tEXt") + 10
    png[i] ^= 0x01
    return write(tmp, "card.png", bytes(png))


def _png(*text_chunks, **parts):
    return lambda tmp: write(tmp, "c.png", make_png(*text_chunks, **parts))


BAD_PNGS = [
    ("no-card", _png(text_chunk("Comment", b"just a picture")), "no character card"),
    ("bad-signature", lambda tmp: write(tmp, "c.png", b"GIF89a not a png at all"), "bad signature"),
    ("truncated", _truncated_png, "truncated"),
    ("crc", _crc_png, "CRC mismatch"),
    ("bad-base64", _png(text_chunk("chara", b"eyJuYW1l!!!not*base64")), "not valid base64"),
    ("bad-json", _png(text_chunk("ccv3", base64.b64encode(b'{"name": '))), "malformed JSON at line 1"),
    ("corrupt-ztxt", _png(chunk(b"zTXt", b"chara\0\0not zlib")), "compressed text is corrupt"),
    ("chunk-over-16MiB", _png(text_chunk("chara", b"A" * (17 << 20), "zTXt")), "over 16 MiB"),
    ("picture-too-large", _png(after=(text_chunk("chara", b64_json(v2_card())),), size=(20000, 20000)),
     "too large to decode"),
    ("missing-field", _png(text_chunk("ccv3", b64_json(v3_card(description="")))), "'data.description'"),
]


@pytest.mark.parametrize("make, expected", [b[1:] for b in BAD_PNGS], ids=[b[0] for b in BAD_PNGS])
def test_bad_pngs(tmp_path, make, expected):
    message = load_error(make(tmp_path))
    assert expected.lower() in message.lower(), message
