"""Generic calibration text: shipped with the package, for activation-aware baselines such as wanda-sp."""

from __future__ import annotations

from importlib import resources

from ..inputs.tokenizer import ChatTokenizer


def generic_text() -> str:
    return (resources.files("ppgguf") / "data" / "generic_calibration.txt").read_text(encoding="utf-8")


def generic_sequences(tokenizer: ChatTokenizer, count: int, length: int) -> list[list[int]]:
    """`count` sequences of `length` tokens cut from the generic calibration text, in order."""
    ids = tokenizer.encode(generic_text())
    needed = count * length
    while len(ids) < needed:
        ids = ids + ids
    return [ids[i * length : (i + 1) * length] for i in range(count)]
