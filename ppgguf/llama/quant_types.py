"""llama.cpp's quant types as ppgguf names them, and the checks on a requested type, before any work.

`QUANT_TYPES` maps each type to llama.cpp's file type and the matrix types its mix picks (anything
else in a quantized file is a width fallback); `EMBEDDING_TYPES` are the types the token embedding
and output matrices can be given. The quantizer itself is `ppgguf.export.quantize`; these tables
import only gguf-py and numpy, so a recipe is checked without loading llama.cpp.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import gguf

from ..errors import UserError
from .reader import read_header

T = gguf.GGMLQuantizationType


class QuantType(NamedTuple):
    ftype: str  # llama.cpp's file type constant (llama_cpp.LLAMA_FTYPE_*)
    # Matrix types that count as "as requested": the types the mix itself picks for layer matrices
    # (llama_tensor_get_type_impl in llama-quant.cpp); anything else is a width fallback.
    types: set
    needs_imatrix: bool = False  # the mix stores some matrix in a type llama.cpp only makes with one


QUANT_TYPES: dict[str, QuantType] = {
    "F32": QuantType("LLAMA_FTYPE_ALL_F32", {T.F32}),
    "F16": QuantType("LLAMA_FTYPE_MOSTLY_F16", {T.F16}),
    "BF16": QuantType("LLAMA_FTYPE_MOSTLY_BF16", {T.BF16}),
    "Q8_0": QuantType("LLAMA_FTYPE_MOSTLY_Q8_0", {T.Q8_0}),
    "Q6_K": QuantType("LLAMA_FTYPE_MOSTLY_Q6_K", {T.Q6_K}),
    "Q5_K_M": QuantType("LLAMA_FTYPE_MOSTLY_Q5_K_M", {T.Q5_K, T.Q6_K}),
    # With an imatrix, the first eighth of ffn_down matrices go to Q5_1 / Q4_1.
    "Q5_0": QuantType("LLAMA_FTYPE_MOSTLY_Q5_0", {T.Q5_0, T.Q5_1}),
    "Q5_1": QuantType("LLAMA_FTYPE_MOSTLY_Q5_1", {T.Q5_1}),
    "Q4_K_M": QuantType("LLAMA_FTYPE_MOSTLY_Q4_K_M", {T.Q4_K, T.Q6_K}),
    "Q4_0": QuantType("LLAMA_FTYPE_MOSTLY_Q4_0", {T.Q4_0, T.Q4_1}),
    "Q4_1": QuantType("LLAMA_FTYPE_MOSTLY_Q4_1", {T.Q4_1}),
    # 32-blocks; Q5_K for attn_v when 4+ heads share a KV head, and early ffn_down without an imatrix.
    "IQ4_NL": QuantType("LLAMA_FTYPE_MOSTLY_IQ4_NL", {T.IQ4_NL, T.Q5_K}),
    "IQ4_XS": QuantType("LLAMA_FTYPE_MOSTLY_IQ4_XS", {T.IQ4_XS, T.Q5_K}),
    "Q3_K_S": QuantType("LLAMA_FTYPE_MOSTLY_Q3_K_S", {T.Q3_K}),
    "Q3_K_M": QuantType("LLAMA_FTYPE_MOSTLY_Q3_K_M", {T.Q3_K, T.Q4_K, T.Q5_K}),
    "Q3_K_L": QuantType("LLAMA_FTYPE_MOSTLY_Q3_K_L", {T.Q3_K, T.Q5_K}),
    "IQ3_M": QuantType("LLAMA_FTYPE_MOSTLY_IQ3_M", {T.IQ3_S, T.Q4_K}),
    "IQ3_S": QuantType("LLAMA_FTYPE_MOSTLY_IQ3_S", {T.IQ3_S, T.Q4_K}),
    "IQ3_XS": QuantType("LLAMA_FTYPE_MOSTLY_IQ3_XS", {T.IQ3_S, T.IQ3_XXS, T.Q4_K}, needs_imatrix=True),
    "IQ3_XXS": QuantType("LLAMA_FTYPE_MOSTLY_IQ3_XXS", {T.IQ3_XXS, T.IQ2_S, T.IQ3_S, T.Q4_K}, needs_imatrix=True),
    "Q2_K": QuantType("LLAMA_FTYPE_MOSTLY_Q2_K", {T.Q2_K, T.Q3_K, T.Q4_K}),
    "IQ2_M": QuantType("LLAMA_FTYPE_MOSTLY_IQ2_M", {T.IQ2_S, T.IQ3_S, T.Q4_K}, needs_imatrix=True),
    "IQ2_S": QuantType("LLAMA_FTYPE_MOSTLY_IQ2_S", {T.IQ2_XS, T.IQ3_S, T.Q4_K}, needs_imatrix=True),
    "IQ2_XS": QuantType("LLAMA_FTYPE_MOSTLY_IQ2_XS", {T.IQ2_XS, T.Q2_K, T.Q4_K}, needs_imatrix=True),
    "IQ2_XXS": QuantType("LLAMA_FTYPE_MOSTLY_IQ2_XXS", {T.IQ2_XXS, T.Q2_K, T.Q4_K}, needs_imatrix=True),
}


# Types llama.cpp rounds the same with or without an importance matrix (no weighted search).
IMATRIX_BLIND = {"F32", "F16", "BF16", "Q8_0"}

# Types the token embedding and output matrices can be given instead of the mix's own choice
# (llama-quantize --token-embedding-type and --output-tensor-type; on SmolLM2 they are one tied
# tensor): the mixes keep them at 6-8 bits (Q8_0 on SmolLM2: 30 of its 87 MiB at IQ4_NL).
EMBEDDING_TYPES = {name: T[name] for name in ("F16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1",
                                              "IQ4_NL", "Q4_0", "Q3_K", "Q2_K")}


def source_quant(path: Path) -> str | None:
    """The type whose mix the GGUF at `path` was made with (its general.file_type), where ppgguf makes it
    too; None for a checkpoint directory or a file that does not say.

    Every base reachable here is a 4-bit GGUF, and requantizing one with its own mix comes close to a
    round trip (llama.cpp gives every tensor the type it had; a Q4_1 block whose values span its 16
    levels comes back bit for bit), where any other type rounds the weights again."""
    if path.is_dir():
        return None
    file_type = read_header(path).get(gguf.Keys.General.FILE_TYPE)
    return next((name for name, quant in QUANT_TYPES.items()
                 if file_type == gguf.LlamaFileType[quant.ftype.removeprefix("LLAMA_FTYPE_")]), None)


def uses_imatrix(quant: str, kind: str, embedding_quant: str = "") -> bool:
    """Whether a build of `quant` (its token embedding at `embedding_quant` where given) with the
    recipe's imatrix `kind` takes an importance matrix at all."""
    return kind != "none" and any(t and t.upper() not in IMATRIX_BLIND for t in (quant, embedding_quant))


# The default quant: the type, importance matrix and embedding type with the lowest measured KL
# whose file is at least 5% smaller than the base model's own weights (ppgguf.export.sizing chooses it per base).
AUTO = "auto"


def check_quant_type(name: str, auto: bool = False) -> str:
    """The type's canonical name; "auto" too where `auto` is allowed (a recipe's knob, not a quantize call)."""
    if auto and name.lower() == AUTO:
        return AUTO
    key = name.upper()
    if key not in QUANT_TYPES:
        allowed = ([AUTO] if auto else []) + list(QUANT_TYPES)
        raise UserError(f"unknown quant type '{name}'; choose one of: {', '.join(allowed)}")
    return key


def check_embedding_type(name: str, width: int | None = None) -> str:
    """The embedding type's name, refused when unknown or when its blocks do not divide the rows
    (llama.cpp applies the override without falling back)."""
    key = name.upper()
    if key not in EMBEDDING_TYPES:
        raise UserError(f"unknown embedding quant type '{name}'; choose one of: {', '.join(EMBEDDING_TYPES)}")
    block = gguf.GGML_QUANT_SIZES[EMBEDDING_TYPES[key]][0]
    if width is not None and width % block:
        fits = ", ".join(n for n, t in EMBEDDING_TYPES.items() if width % gguf.GGML_QUANT_SIZES[t][0] == 0)
        raise UserError(f"--embedding-quant {key} needs rows divisible by {block}, but this model's embedding is "
                        f"{width} wide; choose one of: {fits}")
    return key


def check_imatrix_needed(quant: str, has_imatrix: bool) -> None:
    """Refuse a type llama.cpp cannot make without an importance matrix, before any work."""
    quant = check_quant_type(quant)
    if QUANT_TYPES[quant].needs_imatrix and not has_imatrix:
        raise UserError(
            f"{quant} needs an importance matrix (llama.cpp refuses it without one); "
            "add --imatrix persona, or choose a type that does not, e.g. IQ3_S, Q2_K or Q3_K_S"
        )
