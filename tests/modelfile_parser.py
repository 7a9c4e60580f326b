"""Ollama's Modelfile parser ported to Python, so tests can prove what Ollama reads from ppgguf's Modelfiles."""

from __future__ import annotations

from typing import Any

from ppgguf.build.modelfile import go_is_print, go_is_space, go_rstrip


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
        while start < len(s) and go_is_space(s[start]):
            start += 1
        return go_rstrip(s[start:])

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
        if keep and go_is_print(ch):
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
