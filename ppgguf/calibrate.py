"""Calibration data: the token sequences scorers and the validation gate look at.

- generic text shipped with the package, for activation-aware baselines such as wanda-sp;
- fixed chat prompts in the persona's voice, for the validation gate;
- the persona calibration set of Persona-Pruner (below): questions from the shipped pool selected by
  how much the persona changes the model's representation of them, answered in the persona's voice
  by the teacher (the dense base, or a `--teacher` GGUF with the same tokenizer), cached on disk.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .answer_batches import Sequence
from .base import BaseModel, sha256_of
from .errors import UserError
from .export import export_gguf
from .gguf_file import read_header
from .llama_io import open_gguf
from .memory import STATE_BATCH_CACHE_BYTES
from .persona import Persona, reference_personas
from .recipe import CalibrationSection
from .runs import atomic_write_json, cache_root, key_of, read_json
from .tokenizer import ChatTokenizer

Messages = list[dict[str, str]]

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


def validation_prompts(tokenizer: ChatTokenizer, system_prompt: str, count: int) -> list[list[int]]:
    """Token ids of `count` fixed questions with `system_prompt`, ready for the answer."""
    return [tokenizer.chat_ids([{"role": "system", "content": system_prompt},
                                {"role": "user", "content": question}], True)
            for question, _ in VALIDATION_DIALOGUES[:count]]


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


# ---------------------------------------------------------------------------------------------
# Persona calibration (Persona-Pruner stage 1): questions selected by representation divergence,
# answered in the character's voice by a teacher model.
# ---------------------------------------------------------------------------------------------


def question_pool() -> list[str]:
    lines = (resources.files("ppgguf") / "data" / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["question"] for line in lines if line.strip()]


def candidate_questions(count: int, seed: int = 0) -> list[str]:
    """A fixed, seeded subset of the pool: the same for every persona, so reference states are reusable."""
    pool = question_pool()
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    return [pool[i] for i in order[:count]]


def middle_band(n_layers: int) -> list[int]:
    """Hidden-state layers compared for divergence: the paper's 5..24 of 28, scaled to the model."""
    start, stop = round(n_layers * 5 / 28), round(n_layers * 25 / 28)
    return list(range(max(1, start), max(start + 1, stop)))


@torch.no_grad()
def last_token_states(
    model, tokenizer: ChatTokenizer, system_prompt: str, questions: list[str], layers: list[int], batch_size: int = 32
) -> torch.Tensor:
    """Unit-normalised last-token hidden states [question, layer, hidden] of [system, user q, assistant prompt].

    The system prompt is computed once and its KV cache reused for every question, so the cost is
    the question tokens, not the (long) persona prompt. The output matrix is never applied.
    """
    device = next(model.parameters()).device
    sequences = [
        tokenizer.chat_ids([{"role": "system", "content": system_prompt}, {"role": "user", "content": q}], True)
        for q in questions
    ]
    prefix = _common_prefix(sequences)
    prefix = prefix[: len(prefix) - 1] if len(prefix) == min(map(len, sequences)) else prefix
    prefix_out = model.model(torch.tensor([prefix], device=device), use_cache=True)
    # The prompt's KV cache, repeated once per question of a batch, is most of what a batch holds.
    cache_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in prefix_out.cache.layers)
    batch_size = max(1, min(batch_size, STATE_BATCH_CACHE_BYTES // max(cache_bytes, 1)))
    states = []
    for start in range(0, len(sequences), batch_size):
        batch = [s[len(prefix):] for s in sequences[start : start + batch_size]]
        width = max(map(len, batch))
        ids = torch.zeros(len(batch), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(batch), len(prefix) + width, dtype=torch.long, device=device)
        mask[:, : len(prefix)] = 1
        for row, tail in enumerate(batch):
            ids[row, : len(tail)] = torch.tensor(tail)
            mask[row, len(prefix) : len(prefix) + len(tail)] = 1
        cache = copy.deepcopy(prefix_out.cache)
        cache.batch_repeat_interleave(len(batch))
        out = model.model(ids, attention_mask=mask, cache=cache, use_cache=True, output_hidden_states=True)
        last = torch.tensor([len(t) - 1 for t in batch], device=device)
        rows = torch.arange(len(batch), device=device)
        per_layer = [out.hidden_states[layer][rows, last] for layer in layers]
        states.append(torch.nn.functional.normalize(torch.stack(per_layer, 1).float(), dim=-1).cpu())
    return torch.cat(states)


def _common_prefix(sequences: list[list[int]]) -> list[int]:
    first = sequences[0]
    n = len(first)
    for seq in sequences[1:]:
        n = min(n, len(seq))
        while seq[:n] != first[:n]:
            n -= 1
    return first[:n]


def divergence_scores(persona_states: torch.Tensor, reference_states: Iterable[torch.Tensor]) -> torch.Tensor:
    """score(q) = 1 - mean over reference personas and layers of cos(h(q; P), h(q; P')).

    The reference personas' states [question, layer, hidden] come one persona at a time, so memory
    holds two personas' states, not all of them.
    """
    total, count = torch.zeros(persona_states.shape[0]), 0
    for states in reference_states:
        total += (persona_states * states).sum(-1).mean(-1)
        count += 1
    return 1.0 - total / count


def reference_file(cache_dir: Path, index: int) -> Path:
    return cache_dir / f"persona-{index}.safetensors"


def reference_states(
    model, tokenizer: ChatTokenizer, questions: list[str], layers: list[int], count: int, cache_dir: Path
) -> Iterator[torch.Tensor]:
    """States of each reference persona on the candidate questions, one persona at a time. They depend
    only on the base model and the pool: each is written to `cache_dir` (fp16) when computed, and
    read from there by every later build, or by this one after a crash."""
    for i, persona in enumerate(reference_personas(count)):
        path = reference_file(cache_dir, i)
        if not path.is_file():
            states = last_token_states(model, tokenizer, persona.system_prompt, questions, layers)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".partial")
            save_file({"states": states.half().contiguous()}, str(tmp))
            tmp.replace(path)
        yield load_file(str(path))["states"].float()  # as cached, so every build scores alike


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


def choose_teacher(base: BaseModel, teacher: str, progress=lambda _msg: None) -> tuple[Path, str]:
    """The GGUF that answers in the persona's voice, and a key for its content.

    `teacher` (the recipe's) if set, checked to tokenize as the base does; else the dense base itself
    (a base that is not a GGUF is converted once and cached per base model).
    """
    if teacher:
        path = check_teacher(base, teacher)
        return path, "sha256:" + sha256_of([path])  # the cache follows the teacher's content, not its path
    if base.source.lower().endswith(".gguf"):
        return Path(base.source), "base"
    dense = cache_root() / "teachers" / f"{base.sha256[:16]}.f16.gguf"
    if dense.is_file():
        progress("Reusing the dense teacher GGUF (cached per base model)")
    else:
        dense.parent.mkdir(parents=True, exist_ok=True)
        export_gguf(base.model, base.family, base.tokenizer_spec, dense, "F16")
    return dense, "base"


def cached_persona_calibration(
    base: BaseModel, tokenizer: ChatTokenizer, persona: Persona, settings: CalibrationSection, seed: int,
    progress=lambda _msg: None,
) -> list[dict]:
    """Stage 1, reused from the cache when the base, teacher, persona and calibration settings are unchanged."""
    chosen = {k: getattr(settings, k) for k in (
        "candidate_questions", "reference_personas", "selected_questions", "answer_tokens", "teacher_temperature")}
    teacher, teacher_key = choose_teacher(base, settings.teacher, progress)
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


# ---------------------------------------------------------------------------------------------
# Conversations for baking the persona into the weights (ppgguf.bake): the calibration answers,
# and for a quarter of them a second user turn answered in voice, so the character holds past the
# first reply; a card's greeting opens those conversations as it opens a chat.
# ---------------------------------------------------------------------------------------------


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
    examples: list[dict], progress=lambda _msg: None,
) -> list[dict]:
    """Second turns {"question", "answer", "followup", "followup_answer"} for the first quarter of `examples`."""
    first = examples[: len(examples) // 4]
    teacher, teacher_key = choose_teacher(base, settings.teacher, progress)
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
