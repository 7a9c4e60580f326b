"""The Ollama Modelfile for a built GGUF: its text, from the chat format, system prompt and parameters.

Ollama quoting. Ollama ends a ``\"\"\"``-quoted value at the first newline where the text read so far,
trailing whitespace removed, ends with ``\"\"\"``, and it silently drops characters that are not
printable (other than tab, CR and LF). A system prompt where either would happen cannot be written
as ``SYSTEM \"\"\"...\"\"\"``. Then the Modelfile has no SYSTEM line; the prompt is written instead into
the TEMPLATE as a Go string literal (``{{ "..." }}``, escaped with ``\\"`` ``\\n`` ``\\uXXXX``, so it holds
no raw ``\"\"\"`` and no unprintable character), used when the conversation has no system message.
Either way Ollama shows the model the exact prompt.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import gguf

from ..llama.keys import arch_key
from ..llama.sampling import DEFAULT_SAMPLING, sampling_from_metadata

# Ollama (Go text/template) TEMPLATEs per chat format (`chat_template.chat_format_of`): the legacy
# template using .System/.Prompt/.Response, the per-message header ({role}), end-of-turn, stop strings.
GO_FORMATS: dict[str, dict[str, Any]] = {
    "chatml": {
        "template": (
            "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
            "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
            "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
        ),
        "header": "<|im_start|>{role}\n",
        "end": "<|im_end|>\n",
        "stop": ["<|im_start|>", "<|im_end|>"],
    },
    "llama3": {
        "template": (
            "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
            "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
            "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"
        ),
        "header": "<|start_header_id|>{role}<|end_header_id|>\n\n",
        "end": "<|eot_id|>",
        "stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    },
}

_GO_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"'}

# Ollama's default context is short; a Modelfile asks for the model's own, up to this.
_MAX_NUM_CTX = 4096


def go_string_literal(text: str) -> str:
    """`text` as a Go interpreted string literal holding only printable characters and no '\"\"\"'."""

    def escape(ch: str) -> str:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            return _GO_ESCAPES[ch]
        if ch.isprintable() and not (0xD800 <= code <= 0xDFFF):
            return ch
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"

    return '"' + "".join(escape(ch) for ch in text) + '"'


def go_is_space(ch: str) -> bool:
    """Go's unicode.IsSpace (used by strings.TrimSpace)."""
    return ch in "\t\n\v\f\r \x85\xa0" or (ch.isspace() and unicodedata.category(ch) in ("Zs", "Zl", "Zp"))


def go_rstrip(text: str) -> str:
    """`text` without trailing Go whitespace."""
    end = len(text)
    while end and go_is_space(text[end - 1]):
        end -= 1
    return text[:end]


def go_is_print(ch: str) -> bool:
    """Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and ASCII space."""
    return ch == " " or (ch.isprintable() and unicodedata.category(ch)[0] in "LMNPS")


def triple_quote_safe(text: str) -> bool:
    """Whether Ollama reads ``\"\"\"text\"\"\"`` back as exactly `text`."""
    for i, ch in enumerate(text):
        if ch in "\r\n":
            if go_rstrip(text[:i]).endswith('"""'):
                return False
        elif ch != "\t" and not go_is_print(ch):
            return False
    return True


def modelfile_name(gguf_name: str) -> str:
    """The Modelfile's file name for the GGUF named `gguf_name`: ``<stem>.Modelfile``."""
    return Path(gguf_name).stem + ".Modelfile"


def modelfile_params(metadata: dict[str, Any]) -> dict[str, Any]:
    """The PARAMETER values, in order, for a GGUF's scalar metadata: its sampling and num_ctx."""
    sampling = {**DEFAULT_SAMPLING, **sampling_from_metadata(metadata)}
    arch = metadata.get(gguf.Keys.General.ARCHITECTURE, "llama")
    context = int(metadata.get(arch_key(gguf.Keys.LLM.CONTEXT_LENGTH, arch), 2048))
    params: dict[str, Any] = {name: sampling[name] for name in DEFAULT_SAMPLING}
    params["num_ctx"] = min(context, _MAX_NUM_CTX)
    return params


def modelfile_text(chat_format: str | None, gguf_name: str, system_prompt: str, params: dict[str, Any]) -> str:
    """The Ollama Modelfile for the GGUF `gguf_name` (a file beside it) in chat format `chat_format`.

    `params` are PARAMETER lines (temperature, top_p, top_k, min_p, repeat_penalty, num_ctx, ...), in
    order; the format's stop strings follow them. Raises ValueError for an unknown `chat_format`.
    """
    fmt = GO_FORMATS.get(chat_format or "")
    if fmt is None:
        raise ValueError(f"{gguf_name}: unknown chat format; cannot write an Ollama TEMPLATE for it")
    lines = [
        f"# Ollama Modelfile written by ppgguf. Use: ollama create NAME -f {modelfile_name(gguf_name)}",
        f"FROM ./{gguf_name}",
        "",
    ]
    if triple_quote_safe(system_prompt):
        template = fmt["template"]
        lines += [f'SYSTEM """{system_prompt}"""', ""]
    else:
        template = _messages_template_with_default(fmt, system_prompt)
        lines += [
            "# The system prompt cannot be quoted for SYSTEM; the TEMPLATE inserts it (as a Go string",
            "# literal) whenever a conversation has no system message of its own.",
            "",
        ]
    lines += [f'TEMPLATE """{template}"""', ""]
    for name, value in params.items():
        lines.append(f"PARAMETER {name} {_param_value(value)}")
    for stop in fmt["stop"]:
        lines.append(f"PARAMETER stop {_param_value(stop)}")
    return "\n".join(lines) + "\n"


def _messages_template_with_default(fmt: dict[str, Any], system_prompt: str) -> str:
    """An Ollama .Messages template that inserts `system_prompt` when there is no system message."""
    header, end = fmt["header"], fmt["end"]
    return (
        '{{- if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
        + header.format(role="system") + "{{ " + go_string_literal(system_prompt) + " }}" + end
        + "{{ end }}"
        + "{{- range .Messages }}" + header.format(role="{{ .Role }}") + "{{ .Content }}" + end + "{{ end }}"
        + header.format(role="assistant")
    )


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if not text or any(c in text for c in '"\n\r') or not all(go_is_print(c) for c in text):
        raise ValueError(f"parameter value {text!r} cannot be written on one Modelfile line")
    return f'"{text}"'
