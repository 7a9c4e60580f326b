"""The model families ppgguf supports, as one table.

Everything that differs between families lives in `FAMILIES`; the rest of the code asks the table
instead of branching on names (the way gguf-py keeps its constants).
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ..errors import UserError


@dataclass(frozen=True)
class Family:
    name: str  # Hugging Face `model_type`
    config_class: type
    model_class: type
    gguf_arch: gguf.MODEL_ARCH  # architecture written for uniform widths
    # llama.cpp's `llama` graph uses the "normal" rotary layout, so convert_hf_to_gguf permutes Q and
    # K rows of Llama-style checkpoints; Qwen2 uses the NeoX layout and is stored unpermuted.
    permute_qk: bool
    # Architecture name(s) a GGUF of this family carries in `general.architecture`.
    gguf_names: tuple[str, ...]
    # Whether llama.cpp's `deci` graph (per-layer widths) computes this family: it has no Q/K norms.
    per_layer: bool = True


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", LlamaConfig, LlamaForCausalLM, gguf.MODEL_ARCH.LLAMA, True, ("llama",)),
    "mistral": Family("mistral", MistralConfig, MistralForCausalLM, gguf.MODEL_ARCH.LLAMA, True, ()),
    "qwen2": Family("qwen2", Qwen2Config, Qwen2ForCausalLM, gguf.MODEL_ARCH.QWEN2, False, ("qwen2",)),
    # Qwen3 dense: Qwen2 without Q/K/V biases, with an RMS norm over each head's queries and keys.
    "qwen3": Family("qwen3", Qwen3Config, Qwen3ForCausalLM, gguf.MODEL_ARCH.QWEN3, False, ("qwen3",),
                    per_layer=False),
}

# Per-layer widths need llama.cpp's `deci` graph (plain `llama` builds every layer with layer 0's sizes):
# it reads heads, KV heads and FFN width per layer. It uses the normal rotary layout, so Q/K are permuted
# for every family.
PER_LAYER_ARCH = gguf.MODEL_ARCH.DECI


def family_for_model_type(model_type: str, where: str) -> Family:
    family = FAMILIES.get(model_type)
    if family is None:
        supported = ", ".join(sorted(FAMILIES))
        raise UserError(
            f"{where}: architecture '{model_type}' is not supported; ppgguf prunes {supported} models"
        )
    return family


def family_for_gguf_arch(arch: str, where: str) -> Family:
    for family in FAMILIES.values():
        if arch in family.gguf_names:
            return family
    supported = ", ".join(sorted({n for f in FAMILIES.values() for n in f.gguf_names}))
    raise UserError(
        f"{where}: GGUF architecture '{arch}' is not supported as a base model; use a {supported} GGUF "
        "or a Hugging Face checkpoint directory"
    )


def permute_for_gguf(weight, n_head: int):
    """convert_hf_to_gguf's `permute`: HF rotary layout -> llama.cpp's, for Q (n_head) or K (n_head_kv)."""
    shape = weight.shape
    return weight.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpermute_from_gguf(weight, n_head: int):
    """Inverse of `permute_for_gguf`."""
    shape = weight.shape
    return weight.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
