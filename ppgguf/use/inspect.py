"""Read what a GGUF says about itself: architecture, widths per layer, parameters, persona keys."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from ..llama.keys import ATTENTION, LLM, arch_key
from ..llama.reader import read_header


def inspect_gguf(path: Path) -> dict:
    header = read_header(path, full=True)  # every ppgguf.* value, whatever its type
    arch = header.get(gguf.Keys.General.ARCHITECTURE, "?")
    n_layers = header.get(arch_key(LLM.BLOCK_COUNT, arch), 0)

    def per_layer(template: str) -> list:
        value = header.get(arch_key(template, arch))
        return value if isinstance(value, list) else [value] * n_layers

    widths = [
        {"n_ff": ff, "n_head": h, "n_head_kv": kv}
        for ff, h, kv in zip(per_layer(LLM.FEED_FORWARD_LENGTH), per_layer(ATTENTION.HEAD_COUNT),
                             per_layer(ATTENTION.HEAD_COUNT_KV))
    ]
    file_type = header.get(gguf.Keys.General.FILE_TYPE)
    return {
        "architecture": arch,
        "name": header.get(gguf.Keys.General.NAME, ""),
        "layers": n_layers,
        "parameters": int(sum(int(np.prod(shape)) for _, shape, _ in header.tensors)),
        "file_bytes": path.stat().st_size,
        "file_type": gguf.LlamaFileType(file_type).name if file_type is not None else "?",
        "widths": widths,
        "ppgguf": {key: value for key, value in header.values().items() if key.startswith("ppgguf.")},
        "baked": header.baked,
    }
