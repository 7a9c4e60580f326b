"""The character's system prompt baked into the base model's Jinja chat template, and the chat format.

`bake_chat_template` wraps the base model's Jinja chat template so that a conversation without a
system message gets the character's system prompt as its system message; a conversation that has
one renders exactly as with the base template. The prompt is embedded as a Jinja string literal
that only uses the escapes every chat-template engine knows (``\\\\ \\' \\n \\r \\t``: Python
jinja2, llama.cpp's C++ engine, transformers, LM Studio); everything else, braces, ``{%``,
quotes and non-ASCII included, is kept as raw characters inside the literal, so it is data.

`chat_format_of` names the chat format of the BASE model's template, before baking: the baked
template holds the persona text, which may itself contain another format's markers.
"""

from __future__ import annotations

from ..inputs.tokenizer import CHATML_TEMPLATE

# llama-cpp-python reads metadata strings through a 1024-byte buffer and truncates a value of
# exactly that length by one byte; a template of that size gets a harmless trailing comment.
_LLAMA_CPP_PY_BUFFER = 1024

_JINJA_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "'": "\\'"}

# Chat formats ppgguf can write an Ollama TEMPLATE for, recognised by a marker in the Jinja
# template; the first format whose marker appears wins.
_FORMAT_MARKERS = {"chatml": "<|im_start|>", "llama3": "<|start_header_id|>"}


def jinja_string_literal(text: str) -> str:
    """`text` as a single-quoted Jinja string literal that every chat-template engine reads back verbatim."""
    if "\x00" in text:
        raise ValueError("a NUL character cannot be stored in a chat template (llama.cpp reads C strings)")
    return "'" + "".join(_JINJA_ESCAPES.get(ch, ch) for ch in text) + "'"


def bake_chat_template(template: str | None, system_prompt: str) -> str:
    """A chat template that inserts `system_prompt` when a conversation has no system message.

    With a system message the original template runs on the original messages. Without one it runs
    on ``[{'role': 'system', 'content': system_prompt}] + messages``, exactly as if the caller had
    passed that system message. `template` None means the plain ChatML template.
    """
    template = template or CHATML_TEMPLATE
    literal = jinja_string_literal(system_prompt)
    prefix = (
        "{%- if messages and messages[0]['role'] == 'system' %}"
        "{%- set messages = messages %}"
        "{%- else %}"
        "{%- set messages = [{'role': 'system', 'content': " + literal + "}] + messages %}"
        "{%- endif %}"
    )
    # With trim_blocks the newline after `%}` is dropped, and the original template then starts at a
    # line start, as it did on its own: its leading whitespace is handled as before (lstrip_blocks).
    # Only needed when it starts with whitespace; otherwise nothing separates the two.
    if template[:1].isspace():
        prefix += "\n"
    baked = prefix + template
    if len(baked.encode("utf-8")) == _LLAMA_CPP_PY_BUFFER:
        baked += "{# #}"
    return baked


def chat_format_of(base_template: str | None) -> str | None:
    """'chatml', 'llama3' or None (unknown), from the base model's Jinja chat template before baking.

    `base_template` None means the plain ChatML template (what `bake_chat_template` uses then).
    """
    template = base_template or CHATML_TEMPLATE
    return next((name for name, marker in _FORMAT_MARKERS.items() if marker in template), None)
