"""Forward passes over persona calibration sequences, batched around their shared persona prompt.

Every persona calibration sequence is [system: persona prompt, user: question, assistant: answer],
and the persona prompt (about 200 tokens for a RoleBench description) is both identical in all of
them and longer than the rest. A batch runs that prefix once, repeats its KV cache across the batch
and runs only the differing tails, so mask learning and healing pay for the prompt once per step
instead of once per sequence. Gradients flow through the shared prefix like through the tails.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

# cuBLAS gives run-to-run identical results only with a fixed workspace; it reads this when PyTorch
# creates its first cuBLAS handle, so it is set before any GPU work (an explicit setting is kept).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# (token ids of [system, user, assistant answer], index where the answer starts)
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


def answer_logits(model, batch: list[Sequence], prefix_length: int, device: str) -> list[torch.Tensor]:
    """For each sequence, the logits at the positions that predict its answer tokens.

    `prefix_length` tokens at the start are shared by every sequence of the batch (see
    shared_prefix_length). The tails are right-padded: under causal attention a real token never
    sees the padding after it, so no attention mask is needed. Only the answer positions go through
    the output matrix.
    """
    cache = None
    if prefix_length:
        prefix = torch.tensor([batch[0][0][:prefix_length]], device=device)
        cache = model.model(prefix, use_cache=True).cache
        cache.batch_repeat_interleave(len(batch))
    tails = [ids[prefix_length:] for ids, _ in batch]
    padded = torch.zeros(len(batch), max(map(len, tails)), dtype=torch.long)
    for row, tail in enumerate(tails):
        padded[row, : len(tail)] = torch.tensor(tail)
    hidden = model.model(padded.to(device), cache=cache, use_cache=cache is not None).last_hidden_state
    return [
        model.lm_head(hidden[row, start - 1 - prefix_length : len(ids) - 1 - prefix_length])
        for row, (ids, start) in enumerate(batch)
    ]


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
