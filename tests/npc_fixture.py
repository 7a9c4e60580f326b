"""A tiny character GGUF for the bake / chat tests.

A random 2-layer tiny llama (`tiny_models.make_model`, vocabulary 49152, tied embeddings) carrying
the real default base model's tokenizer, with the persona baked into its chat template and the
ppgguf / sampling keys the build writes. Built once per process (about a second), in a directory the caller provides.
"""

from __future__ import annotations

import copy
from pathlib import Path

import gguf

from ppgguf.export.chat_template import bake_chat_template
from ppgguf.inputs.base import resolve_base
from ppgguf.inputs.families import FAMILIES
from ppgguf.llama.reader import read_header
from ppgguf.llama.sampling import sampling_metadata
from ppgguf.llama.tokenizer_spec import TokenizerSpec
from tiny_models import make_model

NAME = "Captain Mirela Voss"
# Jinja-looking text, quotes, backslashes, newlines and non-ASCII: all of it must survive as data.
SYSTEM_PROMPT = (
    "You are Captain Mirela Voss of the airship \"Kestrel's Wake\". Stay in character.\n\n"
    "She says {{ user }} and {% if storm %}sails on{% endif %} {# never #} -- a back\\slash, 'quotes', "
    "\"\"\"triple\"\"\"\nand a line ending in quotes \"\"\"\nÜmlaut, 漢字, emoji 😀, tab\there."
)
GREETING = "Wind's up, stranger. State your business or get off my deck."

_cache: dict[tuple, Path] = {}
_spec: list[TokenizerSpec] = []


def base_spec() -> TokenizerSpec:
    if not _spec:
        _spec.append(read_header(resolve_base(None), full=True).tokenizer_spec())
    return _spec[0]


def build_npc(directory: Path, system_prompt: str = SYSTEM_PROMPT, greeting: str | None = GREETING,
              bake: bool = True, name: str = "npc") -> Path:
    """Write `<directory>/<name>.gguf` (cached per arguments) and return its path."""
    from ppgguf.export.writer import export_gguf

    key = (str(directory), system_prompt, greeting, bake, name)
    if key in _cache and _cache[key].exists():
        return _cache[key]
    spec = copy.deepcopy(base_spec())
    if bake:
        spec.set(gguf.Keys.Tokenizer.CHAT_TEMPLATE, bake_chat_template(spec.chat_template, system_prompt),
                 gguf.GGUFValueType.STRING)
    extra = {
        "ppgguf.system_prompt": system_prompt,
        "ppgguf.persona.name": NAME,
        **sampling_metadata(),
    }
    if greeting:
        extra["ppgguf.persona.greeting"] = greeting
    general = {"name": NAME, "license": "apache-2.0"}
    path = Path(directory) / f"{name}.gguf"
    export_gguf(make_model("llama", 49152, tied=True, bos_token_id=1, eos_token_id=2), FAMILIES["llama"], spec, path, "F32", general=general, extra=extra)
    _cache[key] = path
    return path
