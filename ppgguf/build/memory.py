"""How much memory a build needs, predicted from the base model's shapes before anything is loaded.

A build holds the base model in fp32 (4 bytes a parameter) from loading to the end, on top of the
runtime (Python, PyTorch, transformers, llama.cpp). Each stage adds its own working set on top of
those two; the build's peak is the largest sum:

    load       the source weights, mapped while they are converted (a GGUF's or safetensors' bytes),
               and about as much again in transient buffers
    calibrate  the persona prompt's KV cache repeated over a batch of questions (ppgguf.calibration.questions
               caps it; it grows by the questions and the hidden states of every layer come with it: 3x the
               cap), and the teacher in llama.cpp: its file and a 4096-token F16 KV cache
    train      only when pruning or baking: the dense model's answer distributions (whole vocabulary
               rows in fp16, or top-k), AdamW's gradient and two moments (12 more bytes a trained
               parameter), and the activations of a batch
    validate   PyTorch's logits over every validation prompt (fp32, whole vocabulary), and while
               llama.cpp runs one prompt about 6 more copies of one prompt's logits (llama.cpp's
               buffers, the float64 comparison), the quantized file twice (mapped, and repacked for
               the CPU's kernels) and llama.cpp's own runtime

The constants were fitted to the per-stage peaks of the builds in README "Memory" (SmolLM2-135M,
Qwen2.5-Coder 0.5B and 1.5B; `benchmarks/scale.py` measures more); `ppgguf build` refuses up front
when the predicted peak exceeds the memory the machine has available.
"""

from __future__ import annotations

import struct
from pathlib import Path

from gguf import GGML_QUANT_SIZES
from safetensors import SafetensorError

from ..calibration.questions import STATE_BATCH_CACHE_BYTES
from ..errors import UserError
from ..inputs.shapes import ModelShape, model_shape
from ..llama.quant_types import AUTO, QUANT_TYPES
from ..recipe import Recipe
from ..stages import current_rss_bytes

GiB = 2**30
MiB = 2**20
RUNTIME_BYTES = 450 * MiB  # measured: the modules a build imports, llama.cpp's shared library included
TEACHER_CONTEXT = 4096  # ppgguf.calibration.answers.teacher_replies
VALIDATION_TOKENS = 380  # tokens of one validation prompt (persona prompt and question): 367-374 for Captain Mirela
LLAMA_RUNTIME_BYTES = 256 * MiB  # llama.cpp's context, buffers and repacked weights beside a model: measured
ADAMW_EXTRA_BYTES = 12  # gradient + first and second moment, fp32, per trained parameter
PROMPT_AND_QUESTION_TOKENS = 220  # a RoleBench persona prompt and a question, about


def predicted_peak(shape: ModelShape, recipe: Recipe) -> dict[str, int]:
    """Predicted peak resident bytes of each stage of a build of `recipe` on `shape`, and of the build (`total`)."""
    base = RUNTIME_BYTES + 4 * shape.parameters
    calibration, train = recipe.calibration, recipe.train
    vocab_row = shape.vocab * 4  # fp32 logits of one token
    teacher = shape.source_bytes + TEACHER_CONTEXT * shape.layers * shape.kv_width * 2 * 2
    stages = {
        "load": base + 2 * shape.source_bytes,
        "calibrate": base + 3 * STATE_BATCH_CACHE_BYTES + teacher,
        "validate": (base + (recipe.validate.prompts + 6) * VALIDATION_TOKENS * vocab_row
                     + 2 * quantized_bytes(shape, recipe) + LLAMA_RUNTIME_BYTES),
    }
    prunes = recipe.prune.ffn_sparsity > 0 or recipe.prune.head_sparsity > 0
    bakes = train.bakes
    if prunes or bakes:
        answers = calibration.selected_questions * (1.25 if bakes else 1)  # follow-ups when baking
        tokens = int(answers * calibration.answer_tokens)
        target_row = 6 * train.teacher_top_k + 4 if train.teacher_top_k else shape.vocab * 2
        if train.bakes_vectors_only:
            extra = 0  # the norm scales only: a few thousand parameters
        elif train.adapter_rank:  # the adapters' own weights too (4 bytes); the model's weights get no gradient
            trained = adapter_parameters(shape, train.adapter_rank)
            extra = (ADAMW_EXTRA_BYTES + 4) * trained
        else:
            frozen = 0 if train.train_embeddings else shape.embedding_parameters
            extra = ADAMW_EXTRA_BYTES * (shape.parameters - frozen)
        stages["train"] = (base + tokens * target_row + extra
                           + training_activation_bytes(shape, train.batch_size, calibration.answer_tokens,
                                                       earlier_answers=int(bakes)))
    return {**stages, "total": max(stages.values())}


def adapter_parameters(shape: ModelShape, rank: int) -> int:
    """Parameters of rank-`rank` adapters on every projection (ppgguf.pruning.heal): rank x (inputs + outputs) of
    each of q, k, v, o, gate, up and down, at the dense widths (an upper bound for a pruned model)."""
    hidden, kv, ffn = shape.hidden, shape.kv_width, shape.ffn
    per_layer = 2 * hidden + 2 * (hidden + kv) + 2 * hidden + 3 * (hidden + ffn)
    return rank * per_layer * shape.layers


def quantized_bytes(shape: ModelShape, recipe: Recipe) -> int:
    """About the size of the file the build writes (ppgguf.export.sizing says it exactly, once the model is loaded):
    the size target, the source's size for quant "auto" (chosen below it where it can be), or every parameter
    in the widest type the recipe's quant type stores matrices in."""
    if recipe.export.target_size_mib > 0:
        return int(recipe.export.target_size_mib * MiB)
    if recipe.export.quant == AUTO:
        return shape.source_bytes
    widest = max(GGML_QUANT_SIZES[t][1] / GGML_QUANT_SIZES[t][0] for t in QUANT_TYPES[recipe.export.quant].types)
    return int(shape.parameters * widest)


def training_activation_bytes(shape: ModelShape, batch_size: int, answer_tokens: int, earlier_answers: int = 0) -> int:
    """What backpropagation through a batch keeps: per token and layer about 16 hidden-wide and 4
    FFN-wide fp32 vectors and two rows of attention scores per head, over a context of a persona
    prompt, a question and an answer; and the answer logits three times (logits, log-softmax, gradient).
    Fitted to the peaks of mask learning and healing on SmolLM2-135M (README "Memory"). A batch runs its
    shared prompt once; a bake's (ppgguf.pruning.heal with groups) runs one system prompt at a time, at worst all
    of the batch, padded to its longest conversation, which holds an earlier answer where it has a
    follow-up (`earlier_answers`)."""
    earlier = earlier_answers * answer_tokens
    tokens = batch_size * (answer_tokens + earlier + PROMPT_AND_QUESTION_TOKENS // 4)
    context = PROMPT_AND_QUESTION_TOKENS + answer_tokens + earlier
    per_token_layer = 4 * (16 * shape.hidden + 4 * shape.ffn + 2 * shape.heads * context)
    return tokens * shape.layers * per_token_layer + batch_size * answer_tokens * 3 * shape.vocab * 4


def available_bytes() -> int | None:
    """Memory the machine can give a new process now (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(path: Path, recipe: Recipe, what: str) -> dict[str, int] | None:
    """Refuse a build whose predicted peak is above the memory available now; returns the prediction,
    or None for a base whose headers do not read (loading it then says what is wrong with it)."""
    try:
        shape = model_shape(path)
    except (OSError, ValueError, KeyError, TypeError, struct.error, SafetensorError, UserError):
        return None
    peak = predicted_peak(shape, recipe)
    available = available_bytes()
    if available is not None:
        # The prediction is of this process's whole peak: what it holds already (the runtime, a base
        # loaded for an earlier character) is its own to use.
        available += current_rss_bytes()
    if available is not None and peak["total"] > available:
        stage = max((k for k in peak if k != "total"), key=peak.get)
        raise UserError(
            f"{what} needs about {peak['total'] / GiB:.1f} GiB of memory (its {stage} stage) and this machine has "
            f"{available / GiB:.1f} GiB available; use a smaller base model, free memory, or build on a larger machine"
        )
    return peak
