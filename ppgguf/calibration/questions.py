"""Persona calibration, Persona-Pruner stage 1: the questions.

Questions from the shipped pool, selected by how much the persona changes the model's representation
of them: the divergence of the last token's hidden states over the middle band of layers from those
under reference personas (whose states depend only on the base model and the pool, so they are cached
per base model). The teacher answers the selected questions (ppgguf.calibration.answers).
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors.torch import load_file, save_file

from ..inputs.persona import reference_personas
from ..inputs.tokenizer import ChatTokenizer

# The cap on last_token_states' persona-prompt KV cache, repeated over a batch of questions
# (ppgguf.build.memory counts it in a build's peak).
STATE_BATCH_CACHE_BYTES = 256 * 2**20


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
