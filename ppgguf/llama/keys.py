"""The GGUF metadata keys ppgguf writes and reads, as one table (like gguf-py's `gguf.Keys`).

`PPGGUF` holds the keys of ppgguf's own namespace; llama.cpp's keys come from gguf-py
(`gguf.Keys`, whose per-architecture templates take the architecture name with `.format(arch=...)`).
"""

from __future__ import annotations

import gguf

from .sampling import SAMPLING_KEYS


class PPGGUF:
    """Keys under `ppgguf.*`: how a file was built and for which character."""

    VERSION = "ppgguf.version"
    SYSTEM_PROMPT = "ppgguf.system_prompt"
    PERSONA_NAME = "ppgguf.persona.name"
    PERSONA_DESCRIPTION = "ppgguf.persona.description"
    PERSONA_SOURCE_KIND = "ppgguf.persona.source_kind"
    PERSONA_GREETING = "ppgguf.persona.greeting"
    BAKE = "ppgguf.bake"  # "off": the template carries the persona prompt; "name"/"mix": the weights do (ppgguf.pruning.bake)
    METHOD = "ppgguf.method"
    FFN_SPARSITY = "ppgguf.ffn_sparsity"
    HEAD_SPARSITY = "ppgguf.head_sparsity"
    SEED = "ppgguf.seed"
    BASE_SHA256 = "ppgguf.base.sha256"
    FFN_WIDTHS = "ppgguf.ffn_widths"
    HEAD_COUNTS = "ppgguf.head_counts"
    KV_HEAD_COUNTS = "ppgguf.kv_head_counts"


# PPGGUF.BAKE of a file whose template carries the persona prompt: a recipe's bake mode "off".
BAKE_OFF = "off"


def baked(mode: str) -> bool:
    """Whether a bake mode (a recipe's, a report's or a file's PPGGUF.BAKE) puts the character in the weights."""
    return mode != BAKE_OFF


def arch_key(template: str, arch: str) -> str:
    """A per-architecture llama.cpp key, e.g. `arch_key(gguf.Keys.LLM.CONTEXT_LENGTH, "llama")`."""
    return template.format(arch=arch)


LLM = gguf.Keys.LLM
ATTENTION = gguf.Keys.Attention


V = gguf.GGUFValueType

# The value type of every key ppgguf writes outside gguf-py's own add_* methods, so a value is
# stored as llama.cpp reads it (llama.cpp reads general.sampling.top_k and repeat_last_n as int32).
VALUE_TYPES: dict[str, tuple[gguf.GGUFValueType, gguf.GGUFValueType | None]] = {
    PPGGUF.VERSION: (V.STRING, None),
    PPGGUF.SYSTEM_PROMPT: (V.STRING, None),
    PPGGUF.PERSONA_NAME: (V.STRING, None),
    PPGGUF.PERSONA_DESCRIPTION: (V.STRING, None),
    PPGGUF.PERSONA_SOURCE_KIND: (V.STRING, None),
    PPGGUF.PERSONA_GREETING: (V.STRING, None),
    PPGGUF.BAKE: (V.STRING, None),
    PPGGUF.METHOD: (V.STRING, None),
    PPGGUF.FFN_SPARSITY: (V.FLOAT32, None),
    PPGGUF.HEAD_SPARSITY: (V.FLOAT32, None),
    PPGGUF.SEED: (V.UINT32, None),
    PPGGUF.BASE_SHA256: (V.STRING, None),
    PPGGUF.FFN_WIDTHS: (V.ARRAY, V.INT32),
    PPGGUF.HEAD_COUNTS: (V.ARRAY, V.INT32),
    PPGGUF.KV_HEAD_COUNTS: (V.ARRAY, V.INT32),
    # llama.cpp reads the sampling keys' integers as int32 and the rest as float32
    **{key: (V.INT32 if typ is int else V.FLOAT32, None) for key, typ in SAMPLING_KEYS.values()},
}
