"""Forward passes over persona calibration sequences, batched around their shared persona prompt.

Every persona calibration sequence is [system: persona prompt, user: question, assistant: answer],
and the persona prompt (about 200 tokens for a RoleBench description) is both identical in all of
them and longer than the rest. A batch runs that prefix once, repeats its KV cache across the batch
and runs only the differing tails, so the dense pass, mask learning and healing pay for the prompt
once per batch instead of once per sequence. Gradients flow through the shared prefix like through
the tails.
"""

from __future__ import annotations

import contextlib
import os
from typing import Hashable, Iterator

import torch
import torch.nn.functional as F

from . import distill
from .distill import Target

# cuBLAS gives run-to-run identical results only with a fixed workspace; it reads this when PyTorch
# creates its first cuBLAS handle, so it is set before any GPU work (an explicit setting is kept).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# (token ids of a conversation ending with an assistant answer, index where that answer starts)
Sequence = tuple[list[int], int]


def shared_prefix_length(sequences: list[Sequence]) -> int:
    """Length of the prefix common to all sequences, stopping before any position that predicts an answer token."""
    first = sequences[0][0]
    n = min(start - 1 for _, start in sequences)
    for ids, _ in sequences[1:]:
        n = min(n, len(ids))
        while ids[:n] != first[:n]:
            n -= 1
    return max(n, 0)


def answer_logits(model, batch: list[Sequence], prefix_length: int, device: str, before_pass=None) -> list[torch.Tensor]:
    """For each sequence, the logits at the positions that predict its answer tokens.

    `prefix_length` tokens at the start are shared by every sequence of the batch (see
    shared_prefix_length). The tails are right-padded: under causal attention a real token never
    sees the padding after it, so no attention mask is needed. Only the answer positions go through
    the output matrix.

    `before_pass(weights)`, if given, is called before each forward pass with how many sequences
    each of its positions stands for ([batch, tokens]): the batch size for the shared prefix, 1 for
    a tail token, 0 for padding. Activation statistics (wanda-sp) count tokens with it.
    """
    cache = None
    if prefix_length:
        prefix = torch.tensor([batch[0][0][:prefix_length]], device=device)
        if before_pass is not None:
            before_pass(torch.full((1, prefix_length), float(len(batch)), device=device))
        cache = model.model(prefix, use_cache=True).cache
        cache.batch_repeat_interleave(len(batch))
    tails = [ids[prefix_length:] for ids, _ in batch]
    padded = torch.zeros(len(batch), max(map(len, tails)), dtype=torch.long)
    real = torch.zeros(padded.shape)
    for row, tail in enumerate(tails):
        padded[row, : len(tail)] = torch.tensor(tail)
        real[row, : len(tail)] = 1.0
    if before_pass is not None:
        before_pass(real.to(device))
    hidden = model.model(padded.to(device), cache=cache, use_cache=cache is not None).last_hidden_state
    return [
        model.lm_head(hidden[row, start - 1 - prefix_length : len(ids) - 1 - prefix_length])
        for row, (ids, start) in enumerate(batch)
    ]


@torch.no_grad()
def answer_distributions(
    model, sequences: list[Sequence], device: str, batch_size: int = 8, dtype: torch.dtype = torch.float16,
    before_pass=None, top_k: int = 0,
) -> list[Target]:
    """Log-probabilities of `model` at the positions that predict each answer, on the CPU.

    The dense model's are the KL target of mask learning and healing, kept in fp16 (one vocabulary
    row per answer token adds up), or with `top_k` as their top k and the rest's mass
    (ppgguf.calibration.distill); benchmarks ask for fp32 to measure KL. `before_pass` as in answer_logits.
    """
    prefix_length = shared_prefix_length(sequences)
    out: list[Target] = []
    for first in range(0, len(sequences), batch_size):
        batch = sequences[first : first + batch_size]
        for logits in answer_logits(model, batch, prefix_length, device, before_pass):
            logprobs = F.log_softmax(logits.float(), -1)
            out.append(distill.top_k(logprobs.cpu(), top_k) if top_k else logprobs.to(dtype).cpu())
    return out


@contextlib.contextmanager
def deterministic_kernels():
    """Deterministic kernels while training, so one seed gives the same masks and weights on a GPU too.

    Strict: an operation without a deterministic kernel raises instead of silently varying (with
    warn_only, PyTorch keeps the non-deterministic memory-efficient and cuDNN attention backward).
    """
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def split_by_group(indices: list[int], groups: list[Hashable] | None) -> list[list[int]]:
    """`indices` split by their sequences' group, in order of first appearance (all of them without groups).

    Sequences of one group share their start (a bake's: the student's system prompt, ppgguf.pruning.bake), which a
    part then runs once (answer_logits).
    """
    if groups is None:
        return [indices]
    parts: dict[Hashable, list[int]] = {}
    for index in indices:
        parts.setdefault(groups[index], []).append(index)
    return list(parts.values())


def shuffled_batches(count: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """Indices of `steps` batches drawn from successive random permutations of range(count)."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        batch = []
        for _ in range(batch_size):
            if not order:
                order = torch.randperm(count, generator=generator).tolist()
            batch.append(order.pop())
        yield batch
