"""The greedy decoder: a model's deterministic reply to a prompt, through llama-cpp-python.

`ppgguf eval` and benchmarks/fidelity.py both answer questions with `greedy_answer`: the ids (for
teacher-forced KL) and the text (for persona attribution and the samples shown) come from one run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GreedyAnswer:
    ids: list[int]  # the generated tokens, the end-of-generation token included when one came
    text: str  # the detokenized answer without its end-of-generation token, whitespace as generated


def last_logits(llm) -> np.ndarray:
    """Logits after the last evaluated token (works with and without logits_all)."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def is_end(llm, token: int) -> bool:
    """Whether `token` ends a generation in the model's vocabulary (llama.cpp's end-of-generation set)."""
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, int(token)))


def greedy_answer(llm, prompt_ids: list[int], max_tokens: int) -> GreedyAnswer:
    """Greedy continuation of `prompt_ids` from an empty context, up to the first end token or `max_tokens`."""
    llm.reset()
    llm.eval(prompt_ids)
    ids: list[int] = []
    for _ in range(max_tokens):
        token = int(np.argmax(last_logits(llm)))
        ids.append(token)
        if is_end(llm, token):
            break
        llm.eval([token])
    text = llm.detokenize([t for t in ids if not is_end(llm, t)]).decode("utf-8", errors="replace")
    return GreedyAnswer(ids=ids, text=text)
