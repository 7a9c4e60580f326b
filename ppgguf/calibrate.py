"""Calibration data: the token sequences scorers and the validation gate look at.

For now: generic text shipped with the package (for activation-aware baselines such as wanda-sp)
and fixed chat prompts in the persona's voice for the validation gate.
"""

from __future__ import annotations

from importlib import resources

from .persona import Persona
from .tokenizer import ChatTokenizer

# Fixed prompts of the validation gate: everyday questions, each followed by a fixed reply so the
# comparison also covers positions inside an assistant answer.
VALIDATION_DIALOGUES = [
    ("Hello! Who are you, and what do you do all day?",
     "Well met, traveller. I could tell you a great deal about my days, if you have the time to listen."),
    ("What is the best advice you ever received?",
     "Someone once told me to listen twice as much as I speak. I have tried to follow it ever since."),
    ("Can you explain how rain forms, in a few sentences?",
     "Warm air rises and cools, the water vapour in it condenses into droplets, and when they grow heavy they fall."),
    ("Tell me a short story about a lost key.",
     "Once there was a key that slipped from a pocket on a busy street, and a child found it by the fountain."),
    ("What would you do with a free afternoon?",
     "I would take a long walk, find a quiet place to sit, and watch the world go by for a while."),
    ("How do I make a good cup of tea?",
     "Boil fresh water, warm the pot, and let the leaves steep for three to five minutes before pouring."),
    ("Which season do you like most, and why?",
     "Autumn, for the cool air, the colours of the leaves and the long evenings by the fire."),
    ("Give me three tips for learning a new language.",
     "Practise a little every day, speak with real people as early as you can, and read things you enjoy."),
]


def generic_text() -> str:
    return (resources.files("ppgguf") / "data" / "generic_calibration.txt").read_text(encoding="utf-8")


def generic_sequences(tokenizer: ChatTokenizer, count: int, length: int) -> list[list[int]]:
    """`count` sequences of `length` tokens cut from the generic calibration text, in order."""
    ids = tokenizer.encode(generic_text())
    needed = count * length
    while len(ids) < needed:
        ids = ids + ids
    return [ids[i * length : (i + 1) * length] for i in range(count)]


def validation_sequences(tokenizer: ChatTokenizer, persona: Persona, count: int) -> list[list[int]]:
    """Token ids of `count` fixed chat exchanges with the persona's system prompt."""
    sequences = []
    for question, reply in VALIDATION_DIALOGUES[:count]:
        messages = [
            {"role": "system", "content": persona.system_prompt},
            {"role": "user", "content": question},
            {"role": "assistant", "content": reply},
        ]
        sequences.append(tokenizer.chat_ids(messages))
    return sequences
