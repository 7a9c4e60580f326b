"""Read what a GGUF says about itself: architecture, widths per layer, parameters, persona keys."""

from __future__ import annotations

from pathlib import Path

import gguf

from .errors import UserError


def inspect_gguf(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:
        raise UserError(f"{path}: not a readable GGUF file ({err.__class__.__name__}); is it truncated?") from None

    def field(key, default=None):
        fld = reader.fields.get(key)
        return default if fld is None else fld.contents()

    arch = field("general.architecture", "?")
    n_layers = field(f"{arch}.block_count", 0)

    def per_layer(key):
        value = field(f"{arch}.{key}")
        return value if isinstance(value, list) else [value] * n_layers

    widths = [
        {"n_ff": ff, "n_head": h, "n_head_kv": kv}
        for ff, h, kv in zip(per_layer("feed_forward_length"), per_layer("attention.head_count"),
                             per_layer("attention.head_count_kv"))
    ]
    file_type = field("general.file_type")
    return {
        "architecture": arch,
        "name": field("general.name", ""),
        "layers": n_layers,
        "parameters": int(sum(int(t.n_elements) for t in reader.tensors)),
        "file_bytes": path.stat().st_size,
        "file_type": gguf.LlamaFileType(file_type).name if file_type is not None else "?",
        "widths": widths,
        "ppgguf": {k: field(k) for k in reader.fields if k.startswith("ppgguf.")},
    }
