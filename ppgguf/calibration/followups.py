"""Conversations for baking the persona into the weights (ppgguf.pruning.bake).

The calibration answers, and for a quarter of them a second user turn answered in voice, so the
character holds past the first reply; a card's greeting opens those conversations as it opens a chat.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import __version__
from ..inputs.base import BaseModel
from ..inputs.persona import Persona
from ..inputs.tokenizer import ChatTokenizer
from ..recipe import CalibrationSection
from ..runs import atomic_write_json, cache_root, key_of, read_json
from .answers import Messages, choose_teacher, teacher_replies
from .questions import question_pool


def followup_questions(examples: list[dict], count: int, seed: int) -> list[str]:
    """`count` pool questions none of `examples` asks, in a seeded order."""
    asked = {e["question"] for e in examples}
    pool = [q for q in question_pool() if q not in asked]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    return [pool[i] for i in order[:count]]


def opening(persona: Persona) -> Messages:
    return [{"role": "assistant", "content": persona.greeting}] if persona.greeting else []


def cached_followups(
    base: BaseModel, tokenizer: ChatTokenizer, persona: Persona, settings: CalibrationSection, seed: int,
    examples: list[dict], progress=lambda _msg: None, dense_teacher: Path | None = None,
) -> list[dict]:
    """Second turns {"question", "answer", "followup", "followup_answer"} for the first quarter of `examples`
    (`dense_teacher` as ppgguf.calibration.answers.choose_teacher takes it)."""
    first = examples[: len(examples) // 4]
    teacher, teacher_key = choose_teacher(base, settings.teacher, dense_teacher)
    key = key_of({"base": base.sha256, "persona": persona.to_json(), "teacher": teacher_key, "seed": seed,
                  "examples": first, "answer_tokens": settings.answer_tokens,
                  "teacher_temperature": settings.teacher_temperature, "ppgguf": __version__})
    path = cache_root() / "followups" / f"{key}.json"
    cached = read_json(path)
    if cached is not None:
        progress("Reusing the follow-up turns")
        return cached
    questions = followup_questions(examples, len(first), seed)
    conversations = [[{"role": "system", "content": persona.system_prompt}, *opening(persona),
                      {"role": "user", "content": e["question"]}, {"role": "assistant", "content": e["answer"]},
                      {"role": "user", "content": q}] for e, q in zip(first, questions)]
    progress(f"Teacher answers in the persona's voice for {len(conversations)} follow-up questions")
    answers = teacher_replies(teacher, tokenizer, conversations, settings.answer_tokens,
                              settings.teacher_temperature, seed + len(examples))
    followups = [{"question": e["question"], "answer": e["answer"], "followup": q, "followup_answer": a}
                 for e, q, a in zip(first, questions, answers) if a]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, followups)
    return followups


def bake_conversations(persona: Persona, examples: list[dict], followups: list[dict]) -> list[Messages]:
    """Every calibration answer as a one-turn conversation, and every follow-up as a two-turn one
    (the greeting first where the card has one); the last assistant message is the one trained on."""
    single = [[{"role": "user", "content": e["question"]}, {"role": "assistant", "content": e["answer"]}]
              for e in examples]
    double = [[*opening(persona), {"role": "user", "content": f["question"]},
               {"role": "assistant", "content": f["answer"]}, {"role": "user", "content": f["followup"]},
               {"role": "assistant", "content": f["followup_answer"]}] for f in followups]
    return single + double
