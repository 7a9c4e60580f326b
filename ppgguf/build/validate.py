"""The validation gate: the final GGUF must load in llama.cpp and agree with its PyTorch twin.

Both sides get the same token ids; we compare next-token distributions at every position:
top-1 agreement and mean KL(PyTorch || GGUF). F16 and F32 files must agree closely or the build
fails; quantized files are measured and reported.

A heavily pruned model can be numerically fragile: rounding its weights to F16 inside PyTorch alone
moves its predictions (measured on SmolLM2-135M at 50% FFN + 33% heads: KL 0.003, where the dense
model moves by 2e-6). So a gated file passes at 99% top-1, or, for a fragile model, when it stays
within a small factor of that F16-rounding noise floor. A wrong export (permutation, shapes) lands
orders of magnitude above both.

The validation prompts are fixed everyday questions (`VALIDATION_DIALOGUES`), each with a fixed reply
so the comparison also covers positions inside an assistant answer; the file's greedy answers to the
same questions are checked for loops.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..errors import UserError
from ..evaluation.fidelity import loops
from ..inputs.persona import Persona
from ..inputs.tokenizer import ChatTokenizer
from ..llama.decode import greedy_answer
from ..llama.runtime import gguf_logits, open_gguf

# A build warns when at least this share of its greedy answers to the validation questions loop.
# Measured on dense SmolLM2-135M (benchmarks/frontier.py): 64-token greedy answers loop now and then
# at 4 bits too, so one looping answer is not yet a broken file.
LOOPING_WARNING_SHARE = 0.5

# Quant types held to the agreement gate, with the minimum top-1 agreement they must reach.
GATED_TYPES = {"F32": 0.99, "F16": 0.99}
# How far above the F16-rounding noise floor a fragile model's file may land.
FLOOR_KL_FACTOR = 10.0
FLOOR_TOP1_SLACK = 0.05


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


class ValidationError(UserError):
    pass


# Two logits closer than this are a tie: F16 rounding alone moves logits by about 0.01, so the
# GGUF picking the other of two tied tokens is not a disagreement.
TIE_TOLERANCE = 0.05
# Positions compared at a time (memory, not results: every position counts the same).
AGREEMENT_BLOCK = 128


@dataclass
class Agreement:
    positions: int
    top1: float  # GGUF's top token is the reference's top token, or tied with it (TIE_TOLERANCE)
    top1_strict: float  # exact argmax equality
    kl_mean: float
    kl_max: float

    def to_json(self) -> dict:
        return asdict(self)


def agreement(reference: Iterable[np.ndarray], other: Iterable[np.ndarray]) -> Agreement:
    """Top-1 agreement and KL(reference || other) over all positions of all sequences.

    Computed in float64 a block of positions at a time: all positions at once would hold several
    [positions, vocabulary] float64 tensors (4 GiB at 1,500 positions of a 49k vocabulary).
    """
    kl, strict, tied = [], [], []
    for ref_rows, oth_rows in zip(reference, other):
        for first in range(0, len(ref_rows), AGREEMENT_BLOCK):
            ref = torch.from_numpy(ref_rows[first : first + AGREEMENT_BLOCK]).double()
            oth = torch.from_numpy(oth_rows[first : first + AGREEMENT_BLOCK]).double()
            ref_logp = torch.log_softmax(ref, dim=-1)
            kl.append((ref_logp.exp() * (ref_logp - torch.log_softmax(oth, dim=-1))).sum(-1))
            choice = oth.argmax(-1)
            strict.append(ref.argmax(-1) == choice)
            chosen_logit = ref.gather(-1, choice[:, None])[:, 0]
            tied.append(chosen_logit >= ref.max(-1).values - TIE_TOLERANCE)
    kl_all = torch.cat(kl)
    return Agreement(
        positions=len(kl_all), top1=float(torch.cat(tied).double().mean()),
        top1_strict=float(torch.cat(strict).double().mean()),
        kl_mean=float(kl_all.mean()), kl_max=float(kl_all.max()),
    )


@torch.no_grad()
def torch_logits(model: torch.nn.Module, sequences: list[list[int]]) -> list[np.ndarray]:
    device = next(model.parameters()).device
    return [model(torch.tensor([ids], device=device)).logits[0].float().cpu().numpy() for ids in sequences]


def gguf_logits_all(path: Path, sequences: list[list[int]], threads: int | None = None) -> list[np.ndarray]:
    return list(gguf_logits_each(path, sequences, threads))


def gguf_logits_each(path: Path, sequences: list[list[int]], threads: int | None = None) -> Iterator[np.ndarray]:
    """llama.cpp's logits of each sequence in turn, so only one sequence's [positions, vocabulary] is held."""
    n_ctx = max(len(s) for s in sequences) + 8
    try:
        llm = open_gguf(path, n_ctx=n_ctx, logits_all=True, threads=threads)
    except ValueError as err:
        raise ValidationError(f"{path.name} does not load in llama.cpp ({err}); the build is discarded") from None
    try:
        for ids in sequences:
            yield gguf_logits(llm, ids)
    finally:
        llm.close()


@torch.no_grad()
def f16_noise_floor(model: torch.nn.Module, sequences: list[list[int]], reference: list[np.ndarray]) -> Agreement:
    """How far the model's own predictions move when its weights are rounded to F16 in PyTorch."""
    saved = [p.detach().clone() for p in model.parameters()]
    try:
        for p in model.parameters():
            p.copy_(p.half().float())
        return agreement(reference, torch_logits(model, sequences))
    finally:
        for p, original in zip(model.parameters(), saved):
            p.copy_(original)


def passes_gate(result: Agreement, floor: Agreement, minimum: float) -> bool:
    if result.top1 >= minimum:
        return True
    return (
        result.kl_mean <= FLOOR_KL_FACTOR * floor.kl_mean + 1e-4
        and result.top1 >= floor.top1 - FLOOR_TOP1_SLACK
    )


def validate_gguf(
    path: Path, model: torch.nn.Module, sequences: list[list[int]], reference: list[np.ndarray], quant: str
) -> dict:
    """Compare the GGUF with the PyTorch reference logits; raise ValidationError if a gated type disagrees."""
    result = agreement(reference, gguf_logits_each(path, sequences))
    report = {**result.to_json(), "gated": quant in GATED_TYPES}
    minimum = GATED_TYPES.get(quant)
    if minimum is not None and result.top1 < minimum:
        floor = f16_noise_floor(model, sequences, reference)
        report["f16_noise_floor"] = floor.to_json()
        if not passes_gate(result, floor, minimum):
            raise ValidationError(
                f"{path.name} disagrees with the PyTorch model: top-1 {result.top1:.1%} < {minimum:.0%}, "
                f"mean KL {result.kl_mean:.4f} (F16 rounding alone gives {floor.kl_mean:.4f}); "
                "the export is wrong, the build is discarded"
            )
    return report


def greedy_repetition(path: Path, prompts: list[list[int]], max_tokens: int = 64) -> dict:
    """The file's greedy answers to `prompts`: how many loop (ppgguf.evaluation.fidelity.loops), and the first that does."""
    llm = open_gguf(path, n_ctx=max(len(p) for p in prompts) + max_tokens + 8)
    try:
        answers = [greedy_answer(llm, ids, max_tokens).text for ids in prompts]
    finally:
        llm.close()
    looping = [a for a in answers if loops(a)]
    return {"answers": len(answers), "looping": len(looping), "rate": len(looping) / len(answers),
            "example": looping[0][:200] if looping else None}


def looping_warning(repetition: dict) -> str | None:
    if repetition["rate"] < LOOPING_WARNING_SHARE:
        return None
    return (f"{repetition['looping']} of {repetition['answers']} greedy answers to the validation questions loop "
            f"(e.g. {repetition['example']!r}); a lower sparsity or a higher-bit quant type loops less")


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
