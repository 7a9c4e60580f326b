"""Speed measures: decode and prompt speed, time to first token, and the speed-up the bytes predict.

- `speed_sample`: prompt-processing and decode tokens/s, time to first token, for one greedy run.
- `matrix_bytes_per_token` / `bound_speedup`: the decode speed-up predicted by the bytes of matrix
  weights read per decoded token (decoding a small model on a CPU is memory-bound).

The process's resident memory, which `ppgguf bench` also reports, is measured by `ppgguf.stages`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from ..llama.decode import last_logits


def matrix_bytes_per_token(tensors: Iterable[tuple[str, Sequence[int], int]]) -> int:
    """Bytes of matrix weights read to decode one token, from (name, shape, n_bytes) triples.

    Every tensor with at least two dimensions larger than one is read once per token, except the
    token embedding, of which a decode step only gathers one row. A model with tied embeddings
    has no `output.weight`: its token embedding is then read whole, once, as the output matrix.
    """
    tensors = list(tensors)
    names = {name for name, _, _ in tensors}
    tied = "output.weight" not in names
    total = 0
    for name, shape, n_bytes in tensors:
        if sum(1 for d in shape if int(d) > 1) < 2:
            continue  # norms, biases, rope factors
        if name == "token_embd.weight" and not tied:
            continue
        total += int(n_bytes)
    return total


def kv_bytes_per_token(tensors: Iterable[tuple[str, Sequence[int], int]], element_bytes: int = 2) -> int:
    """Bytes of KV cache one context token takes: every layer's K and V projection widths, F16 by default.

    From the tensor table, so per-layer widths (`deci`) count as they are; (name, GGUF shape, bytes) triples,
    a GGUF shape being [input, output].
    """
    return sum(int(shape[1]) * element_bytes for name, shape, _ in tensors
               if name.endswith((".attn_k.weight", ".attn_v.weight")))


def bound_speedup(dense_matrix_bytes: int, npc_matrix_bytes: int) -> float:
    """Decode speed-up predicted by bytes moved per token: dense bytes / npc bytes."""
    return dense_matrix_bytes / max(npc_matrix_bytes, 1)


@dataclass
class SpeedSample:
    prompt_tokens: int
    decode_tokens: int
    pp_tokens_per_s: float
    decode_tokens_per_s: float
    ttft_s: float

    def to_json(self) -> dict:
        return asdict(self)


def speed_sample(llm, prompt_ids: list[int], n_decode: int) -> SpeedSample:
    """One greedy run from an empty context: prompt, first token, then `n_decode` more tokens.

    Generation does not stop at an end token, so every run decodes the same number of tokens.
    """
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt_ids)
    token = int(np.argmax(last_logits(llm)))
    first = time.perf_counter()
    for _ in range(n_decode):
        llm.eval([token])
        token = int(np.argmax(last_logits(llm)))
    end = time.perf_counter()
    return SpeedSample(
        prompt_tokens=len(prompt_ids),
        decode_tokens=n_decode,
        pp_tokens_per_s=len(prompt_ids) / (first - start),
        decode_tokens_per_s=n_decode / (end - first) if n_decode else float("nan"),
        ttft_s=first - start,
    )


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")
