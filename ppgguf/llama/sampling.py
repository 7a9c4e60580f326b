"""Recommended sampler settings and llama.cpp's ``general.sampling.*`` GGUF keys that carry them.

llama.cpp front ends read these keys from the file; ppgguf's chat REPL and the Ollama Modelfile
use the same values.
"""

from __future__ import annotations

from typing import Any

import gguf

# Recommended sampling for a role-play character; a recipe or the caller may override any of them.
DEFAULT_SAMPLING: dict[str, float | int] = {
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.1,
}

# our name -> (GGUF key from gguf-py's constants, Python type llama.cpp expects)
SAMPLING_KEYS: dict[str, tuple[str, type]] = {
    "temperature": (gguf.Keys.General.SAMPLING_TEMP, float),
    "top_p": (gguf.Keys.General.SAMPLING_TOP_P, float),
    "top_k": (gguf.Keys.General.SAMPLING_TOP_K, int),
    "min_p": (gguf.Keys.General.SAMPLING_MIN_P, float),
    "repeat_penalty": (gguf.Keys.General.SAMPLING_PENALTY_REPEAT, float),
    "repeat_last_n": (gguf.Keys.General.SAMPLING_PENALTY_LAST_N, int),
}


def sampling_metadata(sampling: dict[str, Any] | None = None) -> dict[str, float | int]:
    """``general.sampling.*`` keys (full names) for `sampling` (our names; defaults filled in)."""
    values = {**DEFAULT_SAMPLING, **(sampling or {})}
    unknown = set(values) - set(SAMPLING_KEYS)
    if unknown:
        raise ValueError(f"unknown sampling settings: {', '.join(sorted(unknown))}")
    return {SAMPLING_KEYS[name][0]: SAMPLING_KEYS[name][1](value) for name, value in values.items()}


def sampling_from_metadata(metadata: dict[str, Any]) -> dict[str, float | int]:
    """Inverse of `sampling_metadata`: our names for the ``general.sampling.*`` keys present."""
    out: dict[str, float | int] = {}
    for name, (key, typ) in SAMPLING_KEYS.items():
        if key in metadata:
            try:
                out[name] = typ(float(metadata[key])) if typ is int else round(float(metadata[key]), 6)
            except (TypeError, ValueError):
                pass
    return out
