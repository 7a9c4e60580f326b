"""Read a Character Card out of a PNG: the JSON text of its ``ccv3`` or ``chara`` text chunk, through Pillow.

A card PNG is a picture with a ``tEXt``/``zTXt``/``iTXt`` chunk whose keyword is ``chara`` (base64
JSON, V1/V2) or ``ccv3`` (base64 JSON, V3); ``ccv3`` wins when both exist. Card writers put the chunk
before or after the image data. Pillow reads the chunks before the image data when the file is
opened; the image is decoded (which reads the chunks after it) only when no ``ccv3`` chunk came
first. Every bad file raises `UserError` with a one-line message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import re
import struct
from pathlib import Path
from typing import Iterator, Mapping

from PIL import Image, PngImagePlugin

from ..errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_CARD_BYTES = 64 * 1024 * 1024  # PNG cards are images: allow a large picture
MAX_TEXT_CHUNK_BYTES = 16 * 1024 * 1024  # one inflated text chunk: as large as a JSON card may be
CARD_KEYWORDS = ("ccv3", "chara")  # in order of preference
MIB = 1024 * 1024

_BAD_CRC = re.compile(r"checksum in b'(\w{4})'")


def png_card_text(path: Path, source: str) -> tuple[str, str]:
    """(the card's JSON text, where it came from, for messages) of the PNG card at `path`."""
    size = path.stat().st_size
    if size > MAX_PNG_CARD_BYTES:
        raise UserError(
            f"{source}: PNG is {size // MIB} MiB, over the {MAX_PNG_CARD_BYTES // MIB} MiB "
            "limit; export the card with a smaller picture or as .json"
        )
    if size == 0:
        raise UserError(f"{source}: the file is empty; export the character card again")
    blob = path.read_bytes()
    if not blob.startswith(PNG_SIGNATURE):
        raise UserError(
            f"{source}: not a PNG file (bad signature); give a PNG character card, a .json card or a text file"
        )
    texts = _card_chunks(blob, source)
    for keyword in CARD_KEYWORDS:
        if keyword in texts:
            where = f"{source} ('{keyword}' chunk)"
            return _decoded_payload(texts[keyword], where), where
    raise UserError(
        f"{source}: PNG has no character card inside (no 'chara' or 'ccv3' text chunk); "
        "export the character as a card PNG or a .json card"
    )


def _card_chunks(blob: bytes, source: str) -> dict[str, str]:
    """{card keyword: text} of the PNG's text chunks."""
    with _raised_text_limits(), _as_user_errors(source):
        # The plugin class itself, not Image.open: Image.open turns a checksum or truncation error
        # into "cannot identify image file", and the message would no longer say what is wrong.
        with PngImagePlugin.PngImageFile(io.BytesIO(blob)) as image:
            texts = _card_texts(image.info)  # the chunks before the image data
            if "ccv3" not in texts:
                texts = _with_chunks_after_image(image, texts, source)
    return texts


def _with_chunks_after_image(image: PngImagePlugin.PngImageFile, before: dict[str, str], source: str) -> dict[str, str]:
    """The card chunks of the whole file, read by decoding the image; those `before` it if it does not decode."""
    try:
        _check_pixels(image, source)
        return _card_texts(image.text)
    except (UserError, ValueError, SyntaxError, OSError, EOFError, struct.error):
        if before:
            return before
        raise


def _card_texts(chunks: Mapping) -> dict[str, str]:
    """The card chunks among Pillow's text chunks and image info, by lower-case keyword (first one wins)."""
    texts: dict[str, str] = {}
    for key, value in chunks.items():
        keyword = key.strip().lower() if isinstance(key, str) else None
        if keyword in CARD_KEYWORDS and isinstance(value, str):
            texts.setdefault(keyword, str(value))
    return texts


def _check_pixels(image: Image.Image, source: str) -> None:
    # Image.open's decompression-bomb check, which the plugin class skips.
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        raise UserError(
            f"{source}: the card's picture is {image.width}x{image.height} pixels, too large to decode; "
            "export the card with a smaller picture or as .json"
        )


@contextlib.contextmanager
def _raised_text_limits() -> Iterator[None]:
    """Pillow's text chunk limits (1 MiB per chunk by default) raised for large cards, for this read only."""
    saved = PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY
    PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = MAX_TEXT_CHUNK_BYTES, MAX_PNG_CARD_BYTES
    try:
        yield
    finally:
        PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = saved


@contextlib.contextmanager
def _as_user_errors(source: str) -> Iterator[None]:
    """Pillow's errors on a broken PNG as one-line UserErrors."""
    try:
        yield
    except ValueError as err:  # the text chunk limits
        message = str(err)
        if "Decompressed" in message:
            raise UserError(
                f"{source}: a PNG text chunk inflates to over {MAX_TEXT_CHUNK_BYTES // MIB} MiB; export a smaller card"
            ) from None
        if "MAX_TEXT_MEMORY" in message:
            raise UserError(
                f"{source}: the PNG text chunks hold over {MAX_PNG_CARD_BYTES // MIB} MiB; export a smaller card"
            ) from None
        raise UserError(f"{source}: PNG is corrupt ({_one_line(message)}); export the card again") from None
    except (SyntaxError, OSError, EOFError, struct.error) as err:
        raise UserError(f"{source}: {_problem(err)}; export the card again") from None


def _problem(err: BaseException) -> str:
    message = str(err.msg if isinstance(err, SyntaxError) else err)
    crc = _BAD_CRC.search(message)
    if crc:
        return f"PNG is corrupt (CRC mismatch in a {crc.group(1)} chunk)"
    if isinstance(err.__cause__, struct.error) or "truncated" in message.lower() or "incomplete" in message:
        return "PNG is truncated (a chunk is cut off)"
    return f"PNG is corrupt ({_one_line(message)})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _decoded_payload(payload: str, where: str) -> str:
    """The JSON text of a card chunk: base64 (standard or URL-safe) of UTF-8 JSON, or the JSON itself."""
    stripped = payload.strip()
    if not stripped:  # Pillow reads a chunk whose compressed text is corrupt as empty
        raise UserError(f"{where}: the chunk is empty or its compressed text is corrupt; export the card again")
    if stripped.startswith("{"):
        return stripped  # some tools store the JSON itself
    compact = "".join(stripped.split())
    compact += "=" * (-len(compact) % 4)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = base64.b64decode(compact, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as e:
            raise UserError(f"{where}: not valid base64 ({e}); export the card again") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{where}: the decoded card is not UTF-8 JSON; export the card again") from None
