"""The character in the weights (`--bake`): in voice without the persona prompt.

Context distillation (Snell et al. 2022; "Prompt Baking", Bhargava et al. 2024): the dense model
asked WITH the persona prompt is the teacher; the student is trained on the same conversations with
the persona prompt replaced, minimising KL(P_dense(. | persona prompt, x) || P_student(. | x')) on
the answer tokens. Only the student's input differs from healing: same answers, same targets.

What replaces the prompt decides where the file still behaves:
- "name": always the short prompt, "You are NAME." and the description's first few words, which the
  baked file's chat template inserts when a conversation has no system message (a few dozen tokens to
  prefill instead of hundreds);
- "mix": the short prompt, the base template's own default (no system message), a generic assistant
  prompt, or the full persona prompt, in turn: front ends that send their own system prompt
  (node-llama-cpp's chat session, SillyTavern's presets) or the card itself keep the character.
The generic prompts trained on are not node-llama-cpp's default, which the benchmarks ask with.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..calibration.answers import Messages, conversation_sequence
from ..calibration.batches import Sequence
from ..inputs.persona import Persona
from ..inputs.tokenizer import ChatTokenizer
from ..llama.keys import baked

BAKE_FLAG_MODE = "mix"  # what `ppgguf build --bake` asks for (the modes: ppgguf.recipe.TrainSection.bake)

# Assistant system prompts front ends send; for training only.
GENERIC_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful, friendly AI assistant. Answer the user's questions clearly and concisely.",
    "You are a chatbot. Reply to the user.",
)
# node-llama-cpp 3.21.1's LlamaChatSession default (its config.js): never trained on, for measuring only.
NODE_LLAMA_CPP_SYSTEM_PROMPT = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible.\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something incorrectly. If you don't know the answer to a question, don't share false information."
)


def short_prompt(persona: Persona, words: int) -> str:
    """"You are NAME." and the description's first `words` words (recipe: bake_prompt_words).

    A few words of who the character is carry much of the prompt: on Jack Torrance the dense model's KL to
    itself asked with the full prompt is 0.194 with "You are Jack Torrance." alone and 0.072 with 20 words
    more, and a bake onto each leaves 0.092 and 0.045 (README "The character in the weights").
    """
    return " ".join([f"You are {persona.name}.", *persona.description.split()[:words]])


def template_system_prompt(persona: Persona, mode: str, words: int) -> str:
    """The system prompt the built file's chat template inserts when a conversation has none."""
    return short_prompt(persona, words) if baked(mode) else persona.system_prompt


def student_systems(persona: Persona, mode: str, count: int, seed: int, words: int) -> list[str | None]:
    """The system message the student sees in each of `count` conversations (None: no system message)."""
    if mode == "name":
        return [short_prompt(persona, words)] * count
    # Of every eight conversations (in a seeded order): four see the short prompt, one no system message
    # (the base template's default), one a generic assistant prompt, two the full persona prompt.
    slots = ["name"] * 4 + ["none", "generic"] + ["card"] * 2
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator).tolist()
    generic = torch.randint(len(GENERIC_SYSTEM_PROMPTS), (count,), generator=generator).tolist()
    system_of = {"name": lambda i: short_prompt(persona, words), "none": lambda i: None,
                 "generic": lambda i: GENERIC_SYSTEM_PROMPTS[generic[i]], "card": lambda i: persona.system_prompt}
    return [system_of[slots[order[i] % len(slots)]](i) for i in range(count)]


class BakePairs(NamedTuple):
    teacher: list[Sequence]  # each conversation with the persona prompt
    student: list[Sequence]  # the same conversation as the student sees it
    groups: list[str]  # the student's system prompt ("": none), which batches group by (ppgguf.pruning.heal)


def bake_pairs(tokenizer: ChatTokenizer, persona: Persona, conversations: list[Messages], mode: str,
               seed: int, words: int) -> BakePairs:
    """Each conversation with the persona prompt, and as the student sees it.

    Both end with the same answer tokens, so the teacher's distributions there are the student's targets.
    """
    pairs = BakePairs([], [], [])
    for messages, system in zip(conversations, student_systems(persona, mode, len(conversations), seed, words)):
        prompted = conversation_sequence(tokenizer, persona.system_prompt, messages)
        replaced = conversation_sequence(tokenizer, system, messages)
        if prompted and replaced and prompted[0][prompted[1]:] == replaced[0][replaced[1]:]:
            pairs.teacher.append(prompted)
            pairs.student.append(replaced)
            pairs.groups.append(system or "")
    return pairs
