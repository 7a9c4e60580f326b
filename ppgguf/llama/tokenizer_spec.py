"""TokenizerSpec: every `tokenizer.*` GGUF key with its value and type, as a GGUF carries it.

Copied verbatim from a base GGUF (`ppgguf.llama.reader`), or converted from a Hugging Face
`tokenizer.json` (`ppgguf.inputs.tokenizer.spec_from_hf_dir`), and written into every exported file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gguf


@dataclass
class TokenizerSpec:
    """All `tokenizer.*` GGUF keys: name -> (value, value type, array item type or None)."""

    fields: dict[str, tuple[Any, gguf.GGUFValueType, gguf.GGUFValueType | None]] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        entry = self.fields.get(key)
        return default if entry is None else entry[0]

    @property
    def tokens(self) -> list[str]:
        return self.get(gguf.Keys.Tokenizer.LIST)

    @property
    def chat_template(self) -> str | None:
        return self.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE)

    def set(self, key: str, value: Any, vtype: gguf.GGUFValueType, sub_type: gguf.GGUFValueType | None = None):
        self.fields[key] = (value, vtype, sub_type)

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        for key, (value, vtype, sub_type) in self.fields.items():
            writer.add_key_value(key, value, vtype, sub_type)
