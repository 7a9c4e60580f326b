"""The shape of a base model, read from its headers alone: what sizing and the memory model need.

A GGUF's tensor table and key-value header, or a checkpoint directory's config.json and safetensors
headers: no weight is loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import gguf
from safetensors import safe_open

from ..llama.keys import ATTENTION, LLM, arch_key
from ..llama.reader import read_header


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a build depends on, read from a model's header (no weights loaded)."""

    parameters: int  # stored once: a tied output matrix is not counted twice
    embedding_parameters: int  # of the token embedding and output matrices, in `parameters`
    vocab: int
    hidden: int
    layers: int
    kv_width: int  # KV heads x head dimension
    heads: int
    ffn: int  # FFN width
    source_bytes: int  # of the weight files


def model_shape(path: Path) -> ModelShape:
    """The shape of the base model at `path` (a GGUF file or a checkpoint directory), from headers only."""
    if path.is_dir():
        return _hf_shape(path)
    header = read_header(path)
    arch = header.get(gguf.Keys.General.ARCHITECTURE)

    def field(template: str, default=0):
        return _first(header.get(arch_key(template, arch)) or default)

    n_head, hidden = field(ATTENTION.HEAD_COUNT, 1), field(LLM.EMBEDDING_LENGTH)
    sizes = {name: math.prod(shape) for name, shape, _ in header.tensors}
    vocab = next((shape[1] for name, shape, _ in header.tensors if name == "token_embd.weight"), 0)
    return ModelShape(parameters=sum(sizes.values()),
                      embedding_parameters=sizes.get("token_embd.weight", 0) + sizes.get("output.weight", 0),
                      vocab=vocab, hidden=hidden, layers=field(LLM.BLOCK_COUNT),
                      kv_width=field(ATTENTION.HEAD_COUNT_KV, n_head) * field(ATTENTION.KEY_LENGTH, hidden // n_head),
                      heads=n_head, ffn=field(LLM.FEED_FORWARD_LENGTH), source_bytes=path.stat().st_size)


def _hf_shape(path: Path) -> ModelShape:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    sizes, source_bytes = {}, 0
    for weights in sorted(path.glob("*.safetensors")):
        source_bytes += weights.stat().st_size
        with safe_open(weights, framework="numpy") as f:  # the header only: no tensor is read
            sizes.update({name: math.prod(f.get_slice(name).get_shape()) for name in f.keys()})
    hidden, n_head = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // n_head
    return ModelShape(parameters=sum(sizes.values()),
                      embedding_parameters=sum(n for name, n in sizes.items()
                                               if name.endswith(("embed_tokens.weight", "lm_head.weight"))),
                      vocab=config["vocab_size"], hidden=hidden, layers=config["num_hidden_layers"],
                      kv_width=config.get("num_key_value_heads", n_head) * head_dim, heads=n_head,
                      ffn=config["intermediate_size"], source_bytes=source_bytes)


def _first(value):
    return value[0] if isinstance(value, list) else value
