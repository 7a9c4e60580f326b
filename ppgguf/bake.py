"""Make a built GGUF self-contained: the persona baked into the file, plus companion files.

* `bake_chat_template` wraps the base model's Jinja chat template so that a conversation without a
  system message gets the character's system prompt as its system message; a conversation that has
  one renders exactly as with the base template. The prompt is embedded as a Jinja string literal
  that only uses the escapes every chat-template engine knows (``\\\\ \\' \\n \\r \\t``: Python
  jinja2, llama.cpp's C++ engine, transformers, LM Studio); everything else, braces, ``{%``,
  quotes and non-ASCII included, is kept as raw characters inside the literal, so it is data.
* `sampling_metadata` gives llama.cpp's ``general.sampling.*`` keys (recommended sampler settings
  that llama.cpp front ends read from the file).
* `write_modelfile` writes an Ollama Modelfile; `parse_modelfile` reads one the way Ollama's parser
  (parser/parser.go) does, so tests can prove the system prompt round-trips exactly.
* `write_model_card` writes a Markdown model card from the build report.
* `write_companions` writes both beside the GGUF.

Ollama quoting. Ollama ends a ``\"\"\"``-quoted value at the first newline where the text read so far,
trailing whitespace removed, ends with ``\"\"\"``, and it silently drops characters that are not
printable (other than tab, CR and LF). A system prompt where either would happen cannot be written
as ``SYSTEM \"\"\"...\"\"\"``. Then the Modelfile has no SYSTEM line; the prompt is written instead into
the TEMPLATE as a Go string literal (``{{ "..." }}``, escaped with ``\\"`` ``\\n`` ``\\uXXXX``, so it holds
no raw ``\"\"\"`` and no unprintable character), used when the conversation has no system message.
Either way Ollama shows the model the exact prompt.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any

import gguf

from .tokenizer import CHATML_TEMPLATE

# --------------------------------------------------------------------------------------------
# Jinja: the system prompt baked into tokenizer.chat_template

# llama-cpp-python reads metadata strings through a 1024-byte buffer and truncates a value of
# exactly that length by one byte; a template of that size gets a harmless trailing comment.
_LLAMA_CPP_PY_BUFFER = 1024


# Escapes both Jinja and Go string literals share; each adds its own quote character.
_COMMON_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def jinja_string_literal(text: str) -> str:
    """`text` as a single-quoted Jinja string literal that every chat-template engine reads back verbatim."""
    if "\x00" in text:
        raise ValueError("a NUL character cannot be stored in a chat template (llama.cpp reads C strings)")
    escapes = {**_COMMON_ESCAPES, "'": "\\'"}
    return "'" + "".join(escapes.get(ch, ch) for ch in text) + "'"


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


# --------------------------------------------------------------------------------------------
# Sampling: llama.cpp's general.sampling.* keys

# Recommended sampling for a role-play character; a recipe or the caller may override any of them.
DEFAULT_SAMPLING: dict[str, float | int] = {
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.1,
}

# our name -> (GGUF key from gguf-py's constants, Python type llama.cpp expects)
_SAMPLING_KEYS: dict[str, tuple[str, type]] = {
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
    unknown = set(values) - set(_SAMPLING_KEYS)
    if unknown:
        raise ValueError(f"unknown sampling settings: {', '.join(sorted(unknown))}")
    return {_SAMPLING_KEYS[name][0]: _SAMPLING_KEYS[name][1](value) for name, value in values.items()}


def sampling_from_metadata(metadata: dict[str, Any]) -> dict[str, float | int]:
    """Inverse of `sampling_metadata`: our names for the ``general.sampling.*`` keys present."""
    out: dict[str, float | int] = {}
    for name, (key, typ) in _SAMPLING_KEYS.items():
        if key in metadata:
            try:
                out[name] = typ(float(metadata[key])) if typ is int else round(float(metadata[key]), 6)
            except (TypeError, ValueError):
                pass
    return out


# --------------------------------------------------------------------------------------------
# Ollama Modelfile

# Chat formats we can write an Ollama (Go text/template) TEMPLATE for, recognised by a marker in the
# base model's Jinja template: marker -> (legacy template using .System/.Prompt/.Response,
# per-message header with %s for the role, end-of-turn, stop strings).
_GO_FORMATS: dict[str, dict[str, Any]] = {
    "chatml": {
        "marker": "<|im_start|>",
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
        "marker": "<|start_header_id|>",
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

CHATML_GO_TEMPLATE = _GO_FORMATS["chatml"]["template"]


def chat_format_of(jinja_template: str | None) -> str | None:
    """'chatml', 'llama3' or None, from the base model's Jinja chat template (None = ChatML default)."""
    template = jinja_template or CHATML_TEMPLATE
    for name, fmt in _GO_FORMATS.items():
        if fmt["marker"] in template:
            return name
    return None


def go_template_for(jinja_template: str | None) -> tuple[str, list[str]] | None:
    """(Ollama TEMPLATE, stop strings) for the base model's chat format, or None when unknown."""
    name = chat_format_of(jinja_template)
    if name is None:
        return None
    fmt = _GO_FORMATS[name]
    return fmt["template"], list(fmt["stop"])


def go_string_literal(text: str) -> str:
    """`text` as a Go interpreted string literal holding only printable characters and no '\"\"\"'."""
    escapes = {**_COMMON_ESCAPES, '"': '\\"'}

    def escape(ch: str) -> str:
        code = ord(ch)
        if ch in escapes:
            return escapes[ch]
        if ch.isprintable() and not (0xD800 <= code <= 0xDFFF):
            return ch
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"

    return '"' + "".join(escape(ch) for ch in text) + '"'


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


def _go_is_space(ch: str) -> bool:
    # Go's unicode.IsSpace (used by strings.TrimSpace)
    return ch in "\t\n\v\f\r \x85\xa0" or (ch.isspace() and unicodedata.category(ch) in ("Zs", "Zl", "Zp"))


def _go_rstrip(text: str) -> str:
    end = len(text)
    while end and _go_is_space(text[end - 1]):
        end -= 1
    return text[:end]


def _go_is_print(ch: str) -> bool:
    # Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and ASCII space
    return ch == " " or (ch.isprintable() and unicodedata.category(ch)[0] in "LMNPS")


def triple_quote_safe(text: str) -> bool:
    """Whether Ollama reads ``\"\"\"text\"\"\"`` back as exactly `text`."""
    for i, ch in enumerate(text):
        if ch in "\r\n":
            if _go_rstrip(text[:i]).endswith('"""'):
                return False
        elif ch != "\t" and not _go_is_print(ch):
            return False
    return True


def write_modelfile(
    path: Path,
    gguf_name: str,
    system_prompt: str,
    template_go: str | None = None,
    params: dict[str, Any] | None = None,
    stop: list[str] | None = None,
) -> Path:
    """Write an Ollama Modelfile for `gguf_name` (a file beside `path`) and return `path`.

    `template_go` None means ChatML (`CHATML_GO_TEMPLATE`) with its stop strings. `params` are
    PARAMETER lines (temperature, top_p, top_k, min_p, repeat_penalty, num_ctx, ...), in order.
    """
    path = Path(path)
    chatml = template_go is None or template_go == CHATML_GO_TEMPLATE
    template = CHATML_GO_TEMPLATE if template_go is None else template_go
    if stop is None:
        stop = list(_GO_FORMATS["chatml"]["stop"]) if chatml else []
    lines = [
        f"# Ollama Modelfile written by ppgguf. Use: ollama create NAME -f {path.name}",
        f"FROM ./{gguf_name}",
        "",
    ]
    if triple_quote_safe(system_prompt):
        lines += [f'SYSTEM """{system_prompt}"""', ""]
    else:
        fmt = next((f for f in _GO_FORMATS.values() if f["template"] == template), None)
        if fmt is None:
            raise ValueError(
                "the system prompt cannot be written as SYSTEM \"\"\"...\"\"\" (it holds '\"\"\"' before a line "
                "break or an unprintable character) and the template is not one ppgguf can rewrite"
            )
        template = _messages_template_with_default(fmt, system_prompt)
        lines += [
            "# The system prompt cannot be quoted for SYSTEM; the TEMPLATE inserts it (as a Go string",
            "# literal) whenever a conversation has no system message of its own.",
            "",
        ]
    if '"""' in template:
        raise ValueError('an Ollama TEMPLATE cannot contain \'"""\'')
    lines += [f'TEMPLATE """{template}"""', ""]
    for name, value in (params or {}).items():
        lines.append(f"PARAMETER {name} {_param_value(value)}")
    for s in stop:
        lines.append(f"PARAMETER stop {_param_value(s)}")
    _atomic_write(path, "\n".join(lines) + "\n")
    return path


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if not text or any(c in text for c in '"\n\r') or not all(_go_is_print(c) for c in text):
        raise ValueError(f"parameter value {text!r} cannot be written on one Modelfile line")
    return f'"{text}"'


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """The commands of a Modelfile as (name, value), read the way Ollama's parser reads them.

    A port of Ollama's parser/parser.go state machine: instruction names are case-insensitive
    (FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE, MESSAGE, and the newer DRAFT, RENDERER,
    PARSER, REQUIRES); ``#`` starts a comment line; a value runs to the end of the line unless it
    starts with ``\"\"\"`` (multi-line, up to a closing ``\"\"\"`` before a line break) or ``"``.
    FROM is returned as ("model", path), PARAMETER as (parameter name, value), MESSAGE as
    ("message", "role: text"). Raises ValueError where Ollama would refuse the file.
    """
    commands: list[tuple[str, str]] = []
    NIL, NAME, VALUE, PARAM, MESSAGE, COMMENT = range(6)
    valid = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
             "parameter", "message", "requires"}
    state, buf, name, role, line = NIL, [], "", "", 1

    def unquote(s: str) -> tuple[str, bool]:
        if s[:3] == '"""':
            return (s[3:-3], True) if len(s) >= 6 and s[-3:] == '"""' else ("", False)
        if s[:1] == '"':
            return (s[1:-1], True) if len(s) >= 2 and s[-1] == '"' else ("", False)
        return s, True

    def trim(s: str) -> str:
        start = 0
        while start < len(s) and _go_is_space(s[start]):
            start += 1
        return _go_rstrip(s[start:])

    for ch in text.lstrip("\ufeff"):
        if ch in "\r\n":
            line += 1
        space, newline = ch in " \t", ch in "\r\n"
        # next state for this character (parseRuneForState)
        if state == NIL:
            nxt, keep = (COMMENT, False) if ch == "#" else ((NIL, False) if space or newline else (NAME, True))
        elif state == NAME:
            if ch.isascii() and ch.isalpha():
                nxt, keep = NAME, True
            elif space:
                nxt, keep = VALUE, False
            else:
                raise ValueError(f"line {line}: invalid command")
        elif state == VALUE:
            nxt, keep = (NIL, True) if space or newline else (VALUE, True)
        elif state == PARAM:
            if ch.isascii() and (ch.isalnum() or ch == "_"):
                nxt, keep = PARAM, True
            elif space:
                nxt, keep = VALUE, False
            else:
                raise ValueError(f"line {line}: unexpected end of parameter name")
        elif state == MESSAGE:
            if ch.isascii() and ch.isalpha():
                nxt, keep = MESSAGE, True
            elif space:
                nxt, keep = VALUE, False
            else:
                raise ValueError(f"line {line}: unexpected end of message role")
        else:  # COMMENT
            nxt, keep = (NIL, False) if newline else (COMMENT, False)

        if nxt != state:
            current = "".join(buf)
            if state == NAME:
                if current.lower() not in valid:
                    raise ValueError(f"line {line}: invalid command {current!r}")
                lowered = current.lower()
                if lowered == "from":
                    name = "model"
                elif lowered == "parameter":
                    nxt = PARAM
                elif lowered == "message":
                    nxt, name = MESSAGE, lowered
                else:
                    name = lowered
            elif state == PARAM:
                name = current
            elif state == MESSAGE:
                if current not in ("system", "user", "assistant"):
                    raise ValueError(f"line {line}: invalid message role {current!r}")
                role = current
            elif state == VALUE:
                value, ok = unquote(trim(current))
                if not ok or space:
                    buf.append(ch)
                    continue
                if role:
                    value, role = f"{role}: {value}", ""
                commands.append((name, value))
            buf = []
            state = nxt
        if keep and _go_is_print(ch):
            buf.append(ch)

    if state == VALUE:
        value, ok = unquote(trim("".join(buf)))
        if not ok:
            raise ValueError("unexpected end of file inside a quoted value")
        if role:
            value = f"{role}: {value}"
        commands.append((name, value))
    elif state not in (NIL, COMMENT):
        raise ValueError("unexpected end of file")
    if not any(n == "model" for n, _ in commands):
        raise ValueError("no FROM line")
    return commands


def modelfile_fields(text: str) -> dict[str, Any]:
    """`parse_modelfile` as a dict: from, system, template, license, parameters {name: [values]}."""
    out: dict[str, Any] = {"parameters": {}}
    for name, value in parse_modelfile(text):
        if name == "model":
            out["from"] = value
        elif name in ("system", "template", "license", "adapter"):
            out[name] = value
        elif name == "message":
            out.setdefault("messages", []).append(value)
        else:
            out["parameters"].setdefault(name, []).append(value)
    return out


# --------------------------------------------------------------------------------------------
# Model card


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_model_card(path: Path, report: dict) -> Path:
    """Write a Markdown model card for the build described by `report` (ppgguf.build's report)."""
    path = Path(path)
    out_name = Path(report.get("output", path.with_suffix(".gguf").name)).name
    stem = Path(out_name).stem
    name = report.get("character", stem)
    base = report.get("base", {})
    recipe = report.get("recipe", {})
    params = report.get("parameters", {})
    val = report.get("validation", {})
    quant = report.get("quantization", {})
    widths = report.get("widths", [])
    persona = report.get("persona", {}) or {}
    licence = base.get("license") or report.get("license") or "not stated by the base model"

    lines = [
        f"# {name}",
        "",
        f"A single-character chat model: **{base.get('name', 'the base model')}** pruned down to the one "
        f"character *{name}* by [ppgguf](https://github.com/) (Persona-Pruner style structured pruning), "
        f"then quantized with llama.cpp's own quantizer and validated against its PyTorch twin.",
        "",
        f"The character's system prompt is baked into the file: in any front end that uses the GGUF's "
        f"chat template (llama.cpp, LM Studio, llama-cpp-python) a conversation without a system message "
        f"talks to {name}. A system message of your own replaces it.",
        "",
        "## At a glance",
        "",
        "| | |",
        "|---|---|",
        f"| file | `{out_name}` |",
        f"| base model | {base.get('name', '?')} |",
        f"| base licence | {licence} (this file is a derivative and carries the same licence) |",
        f"| architecture | `{report.get('architecture', '?')}` |",
    ]
    if params:
        lines.append(
            f"| parameters | {params.get('dense', 0):,} dense -> {params.get('pruned', 0):,} pruned "
            f"({_pct(params.get('kept_fraction', 0))} kept) |"
        )
    if "ffn_sparsity" in recipe or "head_sparsity" in recipe:
        lines.append(
            f"| sparsity | {_pct(recipe.get('ffn_sparsity', 0))} of FFN channels, "
            f"{_pct(recipe.get('head_sparsity', 0))} of attention heads removed "
            f"(method `{recipe.get('method', '?')}`, seed {recipe.get('seed', '?')}) |"
        )
    if "file_bytes" in report:
        lines.append(f"| file size | {_mib(report['file_bytes'])} ({report['file_bytes']:,} bytes) |")
    if quant:
        types = ", ".join(f"{k} x{v}" for k, v in quant.get("tensor_types", {}).items())
        lines.append(f"| quantization | {quant.get('quant', recipe.get('quant', '?'))} (tensor types: {types}) |")
    if widths:
        ffn = sorted({w["n_ff"] for w in widths})
        heads = sorted({w["n_head"] for w in widths})
        kv = sorted({w["n_head_kv"] for w in widths})
        fmt = lambda xs: str(xs[0]) if len(xs) == 1 else f"{xs[0]}-{xs[-1]}"  # noqa: E731
        lines.append(
            f"| kept widths | {len(widths)} layers; FFN {fmt(ffn)}, heads {fmt(heads)}, KV heads {fmt(kv)} per layer |"
        )
    lines.append("")

    if val:
        lines += [
            "## Measured fidelity",
            "",
            "Before this file was written, ppgguf ran it in llama.cpp and compared its next-token "
            "predictions with the pruned PyTorch model it was exported from, on the same token ids "
            f"({val.get('positions', '?')} positions of fixed validation conversations):",
            "",
            f"- **top-1 agreement {_pct(val.get('top1', 0))}** (strict argmax {_pct(val.get('top1_strict', 0))}): "
            "how often llama.cpp's most likely next token is the PyTorch model's (near-ties count as agreement);",
            f"- **mean KL {val.get('kl_mean', 0):.4g}** (max {val.get('kl_max', 0):.4g}) nats: how far the "
            "file's next-token distribution is from the PyTorch model's; 0 is identical.",
        ]
        if val.get("gated"):
            lines.append("- this quantization type is gated: the build fails if the file disagrees with PyTorch.")
        else:
            lines.append("- this quantization type is measured, not gated: quantization error is expected here.")
        floor = val.get("f16_noise_floor")
        if floor:
            lines.append(
                f"- for comparison, rounding the PyTorch model's own weights to F16 gives mean KL "
                f"{floor.get('kl_mean', 0):.4g} and top-1 {_pct(floor.get('top1', 0))}."
            )
        lines += [
            "",
            "These figures say the file computes what the pruned model computes. They do not measure how "
            "well the pruned model plays the character compared with the dense base model.",
            "",
        ]

    gguf_file = out_name
    model_name = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem.lower()).strip("-") or "npc"
    lines += [
        "## How to run it",
        "",
        "llama.cpp (recent builds apply the file's chat template, and with it the character, by default; "
        "older ones need `--jinja`):",
        "",
        "```bash",
        f"llama-cli -m {gguf_file} -cnv",
        "```",
        "",
        "Ollama (the Modelfile beside this card carries the system prompt, chat template and sampling):",
        "",
        "```bash",
        f"ollama create {model_name} -f {stem}.Modelfile",
        f"ollama run {model_name}",
        "```",
        "",
        f"LM Studio: copy `{gguf_file}` into your models folder (for example "
        f"`~/.lmstudio/models/ppgguf/{stem}/`) and load it; the baked chat template supplies the character.",
        "",
        "ppgguf's own REPL:",
        "",
        "```bash",
        f"ppgguf chat {gguf_file}",
        "```",
        "",
    ]
    if persona.get("system_prompt"):
        lines += ["## System prompt", "", "```text", persona["system_prompt"].replace("```", "`\u200b``"), "```", ""]
    versions = report.get("versions", {})
    if versions:
        lines += [
            "## Provenance",
            "",
            f"Built by ppgguf {versions.get('ppgguf', report.get('ppgguf_version', '?'))} with "
            + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "ppgguf")
            + f". Base weights sha256 `{base.get('sha256', '?')}`.",
            "",
        ]
    _atomic_write(path, "\n".join(lines))
    return path


# --------------------------------------------------------------------------------------------
# Companion files


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_gguf_strings(gguf_path: Path) -> dict[str, Any]:
    """Scalar metadata of a GGUF (strings and numbers; arrays left out), read without loading tensors."""
    reader = gguf.GGUFReader(gguf_path)
    out: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if fld.types and fld.types[0] != gguf.GGUFValueType.ARRAY:
            out[key] = fld.contents()
    return out


def write_companions(gguf_path: Path, report: dict) -> list[Path]:
    """Write ``<stem>.Modelfile`` and ``<stem>.md`` beside the GGUF; returns their paths.

    The system prompt, chat format, context length and sampling come from the GGUF's own metadata
    (what every front end sees), the rest of the card from `report`.
    """
    gguf_path = Path(gguf_path)
    meta = read_gguf_strings(gguf_path)
    persona = report.get("persona") or {}
    system_prompt = meta.get("ppgguf.system_prompt", persona.get("system_prompt") or "")
    sampling = {**DEFAULT_SAMPLING, **sampling_from_metadata(meta)}
    go = go_template_for(meta.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE))
    if go is None:
        raise ValueError(f"{gguf_path.name}: unknown chat format; cannot write an Ollama TEMPLATE for it")
    template_go, stop = go
    arch = meta.get(gguf.Keys.General.ARCHITECTURE, "llama")
    context = int(meta.get(f"{arch}.context_length", 2048))
    params: dict[str, Any] = {name: sampling[name] for name in DEFAULT_SAMPLING}
    params["num_ctx"] = min(context, 4096)
    modelfile = write_modelfile(
        gguf_path.with_name(gguf_path.stem + ".Modelfile"), gguf_path.name, system_prompt, template_go, params, stop
    )
    card = write_model_card(gguf_path.with_name(gguf_path.stem + ".md"), report)
    return [modelfile, card]
