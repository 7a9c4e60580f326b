"""Persona calibration, Persona-Pruner stage 1: the answers.

The selected questions (ppgguf.calibration.questions) answered in the persona's voice by the teacher:
the dense base model, or a `--teacher` GGUF with the same tokenizer, through llama.cpp. The set is
cached on disk, keyed by the base, the teacher's content, the persona and the settings; the scorers,
healing and the importance matrix read it as token sequences (`answer_sequences`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import __version__
from ..errors import UserError
from ..inputs.base import BaseModel, sha256_of
from ..inputs.persona import Persona
from ..inputs.tokenizer import ChatTokenizer
from ..llama.reader import read_header
from ..llama.runtime import open_gguf
from ..recipe import CalibrationSection
from ..runs import atomic_write_json, cache_root, key_of, read_json
from .batches import Sequence
from .questions import (candidate_questions, divergence_scores, last_token_states, middle_band, reference_file,
                        reference_states)

Messages = list[dict[str, str]]


def teacher_answers(
    teacher_gguf: Path, tokenizer: ChatTokenizer, system_prompt: str, questions: list[str],
    max_tokens: int, temperature: float, seed: int,
) -> list[str]:
    """In-voice answers: the teacher model answers each question with the persona prompt (llama.cpp)."""
    conversations = [[{"role": "system", "content": system_prompt}, {"role": "user", "content": q}] for q in questions]
    return teacher_replies(teacher_gguf, tokenizer, conversations, max_tokens, temperature, seed)


def teacher_replies(
    teacher_gguf: Path, tokenizer: ChatTokenizer, conversations: list[Messages], max_tokens: int,
    temperature: float, seed: int,
) -> list[str]:
    """The teacher's next assistant message in each conversation (llama.cpp, sampled with `seed`)."""
    llm = open_gguf(teacher_gguf, n_ctx=4096, seed=seed)
    answers = []
    try:
        for i, messages in enumerate(conversations):
            out = llm.create_completion(
                tokenizer.chat_ids(messages, True), max_tokens=max_tokens, temperature=temperature, top_p=0.95,
                seed=seed + i, stop=[tokenizer.special["eos_token"]] if tokenizer.special["eos_token"] else None,
            )
            answers.append(out["choices"][0]["text"].strip())
    finally:
        llm.close()
    return answers


def conversation_sequence(tokenizer: ChatTokenizer, system: str | None, messages: Messages) -> Sequence | None:
    """Token ids of [system?] + `messages` (ending with an assistant answer) and where that answer starts.

    None where the template rewrites earlier turns, so the answer is not where it was asked for.
    """
    head = ([{"role": "system", "content": system}] if system is not None else []) + messages[:-1]
    prompt = tokenizer.chat_ids(head, add_generation_prompt=True)
    full = tokenizer.chat_ids(head + messages[-1:])
    if full[: len(prompt)] != prompt or len(full) <= len(prompt):
        return None
    return full, len(prompt)


def answer_sequences(tokenizer: ChatTokenizer, system_prompt: str, examples: list[dict]) -> list[Sequence]:
    """Token ids of [system, user, assistant answer] and the index where the answer starts."""
    sequences = [conversation_sequence(tokenizer, system_prompt, [{"role": "user", "content": e["question"]},
                                                                  {"role": "assistant", "content": e["answer"]}])
                 for e in examples]
    return [s for s in sequences if s is not None]


def persona_calibration(
    model, tokenizer: ChatTokenizer, persona: Persona, teacher_gguf: Path, settings: dict, refs_cache: Path,
    seed: int, progress=lambda _msg: None,
) -> list[dict]:
    """Stage 1 of Persona-Pruner: select persona-sensitive questions and answer them in voice.

    Returns examples {"question", "answer", "divergence"}, most divergent first.
    """
    questions = candidate_questions(settings["candidate_questions"])
    layers = middle_band(model.config.num_hidden_layers)
    count = settings["reference_personas"]
    progress("Scoring questions by how much the persona changes the model")
    mine = last_token_states(model, tokenizer, persona.system_prompt, questions, layers)
    if all(reference_file(refs_cache, i).is_file() for i in range(count)):
        progress("Reusing the reference persona states (cached per base model)")
    else:
        progress(f"Reference personas on {len(questions)} candidate questions (cached per base model)")
    divergence = divergence_scores(mine, reference_states(model, tokenizer, questions, layers, count, refs_cache))
    chosen = torch.argsort(divergence, descending=True)[: settings["selected_questions"]].tolist()
    progress(f"Teacher answers in the persona's voice for {len(chosen)} questions")
    answers = teacher_answers(
        teacher_gguf, tokenizer, persona.system_prompt, [questions[i] for i in chosen],
        settings["answer_tokens"], settings["teacher_temperature"], seed,
    )
    return [
        {"question": questions[i], "answer": answer, "divergence": round(float(divergence[i]), 6)}
        for i, answer in zip(chosen, answers)
        if answer
    ]


def check_teacher(base: BaseModel, teacher: str) -> Path:
    """The `--teacher` GGUF, checked to exist and to tokenize exactly as the base model does."""
    path = Path(teacher).expanduser()
    if not path.is_file() or path.suffix.lower() != ".gguf":
        raise UserError(f"--teacher '{teacher}' is not a GGUF file")
    if read_header(path).tokenizer_hash != read_header(base.vocab_gguf).tokenizer_hash:
        raise UserError(
            f"--teacher '{teacher}' has another tokenizer than the base model {base.name}; its answers "
            "would be read as the wrong tokens: use a teacher of the same model family and vocabulary"
        )
    return path


def choose_teacher(base: BaseModel, teacher: str, dense_teacher: Path | None = None) -> tuple[Path, str]:
    """The GGUF that answers in the persona's voice, and a key for its content.

    `teacher` (the recipe's) if set, checked to tokenize as the base does; else the dense base itself: its
    own GGUF, or for a checkpoint directory `dense_teacher`, the F16 GGUF the build converted it to
    (ppgguf.build.pipeline.dense_teacher: once, cached per base model).
    """
    if teacher:
        path = check_teacher(base, teacher)
        return path, "sha256:" + sha256_of([path])  # the cache follows the teacher's content, not its path
    if base.source.lower().endswith(".gguf"):
        return Path(base.source), "base"
    if dense_teacher is None:
        raise ValueError(f"{base.name} is a checkpoint directory: give its dense teacher GGUF "
                         "(ppgguf.build.pipeline.dense_teacher converts it)")
    return dense_teacher, "base"


def cached_persona_calibration(
    base: BaseModel, tokenizer: ChatTokenizer, persona: Persona, settings: CalibrationSection, seed: int,
    progress=lambda _msg: None, dense_teacher: Path | None = None,
) -> list[dict]:
    """Stage 1, reused from the cache when the base, teacher, persona and calibration settings are unchanged.

    `dense_teacher`: the teacher of a checkpoint-directory base without a `--teacher` (see `choose_teacher`).
    """
    chosen = {k: getattr(settings, k) for k in (
        "candidate_questions", "reference_personas", "selected_questions", "answer_tokens", "teacher_temperature")}
    teacher, teacher_key = choose_teacher(base, settings.teacher, dense_teacher)
    key = key_of({"base": base.sha256, "system_prompt": persona.system_prompt, "teacher": teacher_key,
                  "seed": seed, "ppgguf": __version__, **chosen})
    path = cache_root() / "calibration" / f"{key}.json"
    cached = read_json(path)
    if cached is not None:
        progress("Reusing the persona calibration set")
        return cached
    refs_key = key_of({"base": base.sha256, "n": chosen["candidate_questions"], "refs": chosen["reference_personas"],
                       "ppgguf": __version__})
    examples = persona_calibration(
        base.model, tokenizer, persona, teacher, chosen, cache_root() / "references" / refs_key,
        seed, progress,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, examples)
    return examples
