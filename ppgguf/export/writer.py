"""Export: a (pruned) PyTorch model written as a GGUF file with gguf-py's writer and tensor name maps.

`gguf_metadata` says what a built file carries about itself (the `ppgguf.*` keys of `ppgguf.llama.keys`);
every key is written with its declared type.

Uniform widths are written as the family's own architecture (`llama`, `qwen2` or `qwen3`), which
every llama.cpp front end loads. Per-layer widths are written as `deci`, whose graph reads heads,
KV heads and FFN width per layer (plain `llama` reads per-layer arrays but builds every layer with
layer 0's sizes, so a model whose layers differ fails to load). Head sizes and the rotary dimension
are always written explicitly, because pruning heads changes the head size llama.cpp would otherwise
infer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np
import torch

from .. import __version__
from ..errors import UserError
from ..inputs.families import PER_LAYER_ARCH, Family, permute_for_gguf
from ..llama.keys import PPGGUF, VALUE_TYPES
from ..llama.sampling import sampling_metadata
from ..llama.tokenizer_spec import TokenizerSpec
from ..pruning.surgery import layer_widths

if TYPE_CHECKING:
    from ..inputs.base import BaseModel
    from ..inputs.persona import Persona
    from ..recipe import Recipe

# Output types for the written tensors; 1-D tensors (norms, biases) always stay F32 as llama.cpp expects.
WRITE_TYPES = {"F32": (np.float32, gguf.LlamaFileType.ALL_F32), "F16": (np.float16, gguf.LlamaFileType.MOSTLY_F16)}


def choose_arch(family: Family, widths: list[dict[str, int]], hidden: int | None = None, head_dim: int | None = None) -> gguf.MODEL_ARCH:
    uniform = all(w == widths[0] for w in widths)
    if not uniform:
        check_per_layer(family)
        return PER_LAYER_ARCH
    # llama.cpp's `qwen2` graph sizes attn_q/attn_output as n_embd x n_embd: it cannot load a model
    # with pruned heads (n_head * head_dim != n_embd). Such a model is written as `llama`, whose
    # graph reads the head counts and takes the optional Q/K/V biases (Q/K are then permuted).
    if (
        family.gguf_arch == gguf.MODEL_ARCH.QWEN2
        and hidden is not None and head_dim is not None
        and widths[0]["n_head"] * head_dim != hidden
    ):
        return gguf.MODEL_ARCH.LLAMA
    return family.gguf_arch


def check_per_layer(family: Family) -> None:
    """Per-layer widths need llama.cpp's `deci` graph; refuse a family it cannot compute."""
    if not family.per_layer:
        raise UserError(f"per-layer widths are written for llama.cpp's deci graph, which cannot compute a "
                        f"{family.name} model (its Q/K norms); build it with uniform widths (no --per-layer)")


def _llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Frequency factors of Llama 3.1 rope scaling, as convert_hf_to_gguf writes them (rope_freqs)."""
    base = rope["rope_theta"]
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi / (1.0 / base ** (i / head_dim))
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _add_general(writer: gguf.GGUFWriter, general: dict[str, Any]) -> None:
    """`general.*` keys through gguf-py's own typed add_* methods."""
    writers = {
        "name": writer.add_name, "description": writer.add_description, "license": writer.add_license,
        "base_model.count": writer.add_base_model_count,
        "base_model.0.name": lambda name: writer.add_base_model_name(0, name),
    }
    for key, value in general.items():
        if value is not None:
            writers[key](value)


def _add_typed(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    """One ppgguf or sampling key, stored as the type `ppgguf.llama.keys.VALUE_TYPES` gives it."""
    vtype, item_type = VALUE_TYPES[key]
    if vtype == gguf.GGUFValueType.ARRAY:
        value = [int(v) for v in value] if item_type == gguf.GGUFValueType.INT32 else list(value)
    writer.add_key_value(key, value, vtype, item_type)


def gguf_metadata(persona: Persona, base: BaseModel, recipe: Recipe, model: torch.nn.Module) -> dict[str, dict]:
    """What a built file says about itself: `general.*` names, the `ppgguf.*` keys and sampling defaults."""
    widths = layer_widths(model)
    general = {
        "name": persona.name,
        "description": f"{persona.name}: a persona-pruned {base.name} built by ppgguf",
        "license": base.license,
        "base_model.count": 1,
        "base_model.0.name": base.name,
    }
    extra = {
        PPGGUF.VERSION: __version__,
        PPGGUF.SYSTEM_PROMPT: persona.system_prompt,
        PPGGUF.PERSONA_NAME: persona.name,
        PPGGUF.PERSONA_DESCRIPTION: persona.description,
        PPGGUF.PERSONA_SOURCE_KIND: persona.source_kind,
        PPGGUF.BAKE: recipe.train.bake,
        PPGGUF.METHOD: recipe.prune.method,
        PPGGUF.FFN_SPARSITY: float(recipe.prune.ffn_sparsity),
        PPGGUF.HEAD_SPARSITY: float(recipe.prune.head_sparsity),
        PPGGUF.SEED: recipe.prune.seed,
        PPGGUF.BASE_SHA256: base.sha256,
        PPGGUF.FFN_WIDTHS: [w["n_ff"] for w in widths],
        PPGGUF.HEAD_COUNTS: [w["n_head"] for w in widths],
        PPGGUF.KV_HEAD_COUNTS: [w["n_head_kv"] for w in widths],
    }
    if persona.greeting:
        extra[PPGGUF.PERSONA_GREETING] = persona.greeting
    extra.update(sampling_metadata())
    return {"general": general, "extra": extra}


def export_gguf(
    model: torch.nn.Module,
    family: Family,
    tokenizer_spec: TokenizerSpec,
    out_path: Path,
    write_type: str = "F32",
    general: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    shapes_only: bool = False,
) -> dict[str, Any]:
    """Write `model` to `out_path` (through a temporary name); returns what was written.

    `shapes_only` writes the header and tensor table in full but no tensor data (a sparse file of
    the full length): what llama.cpp's quantizer needs for a dry run (ppgguf.export.sizing), for a model
    whose weights may be on the meta device.
    """
    config = model.config
    widths = layer_widths(model)
    head_dim = config.head_dim
    arch = choose_arch(family, widths, config.hidden_size, head_dim)
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    uniform = arch != PER_LAYER_ARCH
    # `llama` and `deci` use the normal rotary layout: Q/K are permuted whatever the family.
    permute = family.permute_qk or arch != family.gguf_arch
    np_type, file_type = WRITE_TYPES[write_type]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(tmp, arch_name)
    writer.add_type("model")
    _add_general(writer, general or {})
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    per_layer = lambda k: widths[0][k] if uniform else [w[k] for w in widths]  # noqa: E731
    writer.add_feed_forward_length(per_layer("n_ff"))
    writer.add_head_count(per_layer("n_head"))
    writer.add_head_count_kv(per_layer("n_head_kv"))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = dict(config.rope_parameters or {})
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    rope_type = rope.get("rope_type", "default")
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type not in ("default", "llama3"):
        raise UserError(f"rope scaling '{rope_type}' is not supported by the exporter yet")
    tokenizer_spec.add_to(writer)
    for key, value in (extra or {}).items():
        _add_typed(writer, key, value)

    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    if rope_type == "llama3":
        writer.add_tensor("rope_freqs.weight", _llama3_rope_factors(rope, head_dim))
    for gguf_name, tensor in _gguf_tensors(model, name_map):
        if shapes_only:
            dtype = np.dtype(np_type if tensor.dim() > 1 else np.float32)
            writer.add_tensor_info(gguf_name, tuple(tensor.shape), dtype, tensor.numel() * dtype.itemsize)
            continue
        data = tensor.detach().float().cpu().numpy()
        if permute and ".attn_q." in gguf_name:
            data = permute_for_gguf(data, widths[_layer_of(gguf_name)]["n_head"])
        elif permute and ".attn_k." in gguf_name:
            data = permute_for_gguf(data, widths[_layer_of(gguf_name)]["n_head_kv"])
        writer.add_tensor(gguf_name, np.ascontiguousarray(data, dtype=np_type if data.ndim > 1 else np.float32))
    header_bytes = write_and_place(writer, tmp, out_path, shapes_only)
    written = {"architecture": arch_name, "widths": widths}
    if shapes_only:  # what ppgguf.export.sizing needs to predict the quantized file
        written.update(header_bytes=header_bytes, alignment=writer.data_alignment,
                       tensors={name: tuple(int(n) for n in ti.shape) for name, ti in writer.tensors[0].items()})
    return written


def write_and_place(writer: gguf.GGUFWriter, tmp: Path, path: Path, shapes_only: bool = False) -> int | None:
    """Write everything `writer` holds to `tmp`, its temporary name, then rename it to `path`.

    `shapes_only`: the tensors were added as infos only; their data is left as a sparse hole of the
    full length, and the header's bytes (where the tensor table ends) are returned.
    """
    header_bytes = None
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        if shapes_only:
            writer.write_ti_data_to_file()
            fout = writer.fout[0]
            header_bytes = fout.tell()
            pad = writer.ggml_pad
            fout.truncate(pad(header_bytes, writer.data_alignment) + sum(
                pad(ti.nbytes, writer.data_alignment) for ti in writer.tensors[0].values()))
        else:
            writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(path)
    return header_bytes


def _gguf_tensors(model: torch.nn.Module, name_map) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) of every weight the file stores; a tied output matrix is stored once, as token_embd."""
    tensors = []
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name}")
        tensors.append((gguf_name, tensor))
    return tensors


def _layer_of(gguf_name: str) -> int:
    return int(gguf_name.split(".")[1])
